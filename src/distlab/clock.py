"""The simulated clock: clients (or workers) of unequal speed and links, and how long a
round or a step of theirs takes on it.

Each client has a compute speed (1 = the reference, which trains `system.sample_seconds`
per sample) and a link in bits per second, drawn from the run's seed (lognormal or uniform,
as FedScale and the FedBuff paper model device heterogeneity) or read from a trace file.
A client's time in a round is its download, its compute and its upload: the bytes it moved
over its own link plus its samples at its own speed. The figures are simulated seconds,
recorded beside the measured ones; they do not depend on how busy this machine is.

Imports numpy only: the config layer reads a trace before any process starts.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from distlab.config_sections import SystemConfig

# Keeps the system's draws apart from the run's other generators under one seed.
SPEED_STREAM, LINK_STREAM, AVAILABLE_STREAM = 101, 102, 103
TRACE_COLUMNS = ("client", "speed", "bandwidth")


@dataclass(frozen=True)
class Profile:
    """Per client: compute speed, link bits per second and availability windows (simulated
    seconds [start, end) it is reachable; None = always)."""

    speed: np.ndarray
    bandwidth: np.ndarray
    windows: tuple[tuple[tuple[float, float], ...] | None, ...]


def draw(kind: str, cfg: SystemConfig, clients: int, seed: int, stream: int) -> np.ndarray:
    """`clients` positive factors around 1: equal, lognormal(0, sigma) or uniform[low, high]."""
    rng = np.random.default_rng([seed, stream])
    if kind == "lognormal":
        return rng.lognormal(0.0, cfg.sigma, clients)
    if kind == "uniform":
        return rng.uniform(cfg.low, cfg.high, clients)
    return np.ones(clients)


def client_profile(cfg: SystemConfig, clients: int, seed: int) -> Profile:
    """The run's clients: from the trace file when one is given, else drawn from the seed."""
    if cfg.trace is not None:
        return read_trace(cfg.trace, clients)
    speed = draw(cfg.speed, cfg, clients, seed, SPEED_STREAM)
    links = draw(cfg.speed if cfg.vary_links else "equal", cfg, clients, seed, LINK_STREAM)
    return Profile(speed, cfg.bandwidth * links, (None,) * clients)


def read_trace(path: Path, clients: int) -> Profile:
    """A trace CSV (client, speed, bandwidth[, windows]) for clients 0..clients-1; a client
    it leaves out runs at speed 1 on the median link of the others. ValueError in one line
    naming the file and the row when it is missing, malformed or names an unknown client."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"system.trace {str(path)!r} cannot be read: {exc.strerror}") from None
    rows = list(csv.DictReader(text.splitlines()))
    header = rows[0].keys() if rows else []
    if not rows or any(c not in header for c in TRACE_COLUMNS):
        raise ValueError(
            f"system.trace {str(path)!r} must be a CSV with columns client, speed, bandwidth"
            "[, windows] and at least one row"
        )
    speed, bandwidth = np.ones(clients), np.full(clients, np.nan)
    windows: list = [None] * clients
    for line, row in enumerate(rows, start=2):
        client = _trace_row(path, line, row, clients)
        speed[client], bandwidth[client] = float(row["speed"]), float(row["bandwidth"])
        windows[client] = _windows(path, line, row.get("windows") or "")
    bandwidth[np.isnan(bandwidth)] = np.nanmedian(bandwidth)
    return Profile(speed, bandwidth, tuple(windows))


def _trace_row(path: Path, line: int, row: dict, clients: int) -> int:
    where = f"system.trace {str(path)!r} line {line}"
    try:
        client, speed, link = int(row["client"]), float(row["speed"]), float(row["bandwidth"])
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}: client must be an integer, speed and bandwidth numbers "
            f"(got {row['client']!r}, {row['speed']!r}, {row['bandwidth']!r})"
        ) from None
    if not 0 <= client < clients:
        raise ValueError(f"{where}: unknown client {client} (the run has clients 0..{clients - 1})")
    if not (np.isfinite(speed) and speed > 0 and np.isfinite(link) and link > 0):
        raise ValueError(f"{where}: speed and bandwidth must be > 0 (got {speed}, {link})")
    return client


def _windows(path: Path, line: int, text: str) -> tuple[tuple[float, float], ...] | None:
    """'0-600;1200-1800' -> ((0, 600), (1200, 1800)); empty -> None (always available)."""
    if not text.strip():
        return None
    out = []
    for piece in text.split(";"):
        start, sep, end = piece.partition("-")
        try:
            window = (float(start), float(end))
        except ValueError:
            window = (1.0, 0.0)
        if not sep or not window[0] < window[1]:
            raise ValueError(
                f"system.trace {str(path)!r} line {line}: windows must be START-END pairs of "
                f"simulated seconds with START < END, joined by ';' (got {text!r})"
            )
        out.append(window)
    return tuple(out)


class Clock:
    """Simulated seconds of the clients' compute and transfers (see the module doc)."""

    def __init__(self, cfg: SystemConfig, clients: int, seed: int) -> None:
        self.cfg, self.seed = cfg, seed
        self.profile = client_profile(cfg, clients, seed)
        self.now = 0.0
        """The simulated time so far (a round loop or a step loop advances it)."""
        self.windowed = any(w is not None for w in self.profile.windows)

    def advance(self, seconds: float) -> float:
        """Move the clock on by `seconds`; returns the new time."""
        self.now += float(seconds)
        return self.now

    def compute_seconds(self, clients: np.ndarray, samples: np.ndarray) -> np.ndarray:
        """Seconds each client takes to train on `samples` samples at its speed."""
        speed = self.profile.speed[np.asarray(clients, dtype=np.int64)]
        return np.asarray(samples, dtype=np.float64) * self.cfg.sample_seconds / speed

    def link_seconds(self, clients: np.ndarray, nbytes) -> np.ndarray:
        """Seconds each client's link takes to carry `nbytes` (one number or one per client)."""
        bandwidth = self.profile.bandwidth[np.asarray(clients, dtype=np.int64)]
        return 8.0 * np.asarray(nbytes, dtype=np.float64) / bandwidth

    def available(self, round_: int, clients: np.ndarray, at: float) -> np.ndarray:
        """Which of `clients` can take part in round `round_` starting at simulated time `at`:
        inside one of its trace windows, and drawn available with system.availability."""
        clients = np.asarray(clients, dtype=np.int64)
        ok = np.ones(len(clients), dtype=bool)
        if self.windowed:  # a trace with windows; a Python pass over its clients
            ok = np.array([_inside(self.profile.windows[c], at) for c in clients], dtype=bool)
        if self.cfg.availability < 1:
            rng = np.random.default_rng([self.seed, AVAILABLE_STREAM, round_])
            ok &= rng.random(len(self.profile.speed))[clients] < self.cfg.availability
        return ok


def _inside(windows: tuple[tuple[float, float], ...] | None, at: float) -> bool:
    return windows is None or any(start <= at < end for start, end in windows)


class StepClock:
    """Simulated seconds of a data-parallel run's steps as one rank sees them: the workers
    (clients 0..world-1 of the system) take equal shares of a step, so the step waits for
    the slowest one's compute, then this rank's bytes of the step cross its own link. Every
    rank draws the same speeds from the seed: no message is needed."""

    def __init__(self, cfg: SystemConfig, world: int, rank: int, seed: int) -> None:
        self.clock = Clock(cfg, world, seed)
        profile = self.clock.profile
        self.per_sample = cfg.sample_seconds / float(profile.speed[:world].min())
        self.bits_per_second = float(profile.bandwidth[rank % world])

    @property
    def now(self) -> float:
        return self.clock.now

    def step(self, samples: int, nbytes: int) -> float:
        """Advance by one step of `samples` local samples that moved `nbytes`; returns the
        clock at its end."""
        return self.clock.advance(samples * self.per_sample + 8.0 * nbytes / self.bits_per_second)


def system_clients(cfg) -> int:
    """How many clients the system describes: a federated run's clients, else its workers."""
    return getattr(cfg.strategy, "clients", None) or cfg.workers


def check_system(cfg) -> None:
    """The system's rules that need the run (a trace's clients); ValueError in one line."""
    if cfg.system.trace is not None:
        read_trace(cfg.system.trace, system_clients(cfg))
    check_deadline(cfg)


# Executors that can cut a client's local steps at the deadline (FedProx partial work).
PARTIAL_EXECUTORS = ("vectorized",)


def check_deadline(cfg) -> None:
    """A deadline needs synchronous federated rounds; partial work needs an executor that
    can cut a client's local steps. ValueError in one line."""
    system, strategy = cfg.system, cfg.strategy
    if system.deadline is None:
        return
    if getattr(strategy, "clients_per_round", False) is False:
        raise ValueError(
            f"system.deadline applies to federated rounds (strategy fedavg); strategy "
            f"{strategy.name} has none"
        )
    executor = getattr(strategy, "executor", "vectorized")
    if executor == "auto":
        executor = "processes" if cfg.workers > 1 else "vectorized"
    if system.stragglers == "partial" and executor not in PARTIAL_EXECUTORS:
        raise ValueError(
            f"system.stragglers=partial needs executor {' or '.join(PARTIAL_EXECUTORS)}, which "
            f"cuts a client's local steps at the deadline (got executor {executor}); use "
            "system.stragglers=drop"
        )
