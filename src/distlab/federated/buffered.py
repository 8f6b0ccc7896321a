"""Buffered asynchronous aggregation on the simulated clock, kept apart from any strategy.

Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation" (FedBuff):
`concurrency` clients train at once, each from the global model of the moment it started;
whenever one finishes, a client sampled uniformly from the idle (and available) ones takes
its slot. The server keeps the arrivals in a buffer and, every `buffer` (K) arrivals, steps

    global += server_lr * sum_i s(tau_i) * delta_i / K,   s(tau) = 1 / sqrt(1 + tau)

where delta_i is the client's model minus the model it started from and tau_i the server
versions since it started. Time is the simulated clock's (clock.py): a trip lasts its
download, its local samples at its speed and its upload, so how fast this machine trains
changes nothing in the run.

Training is deterministic given the start model, the client and a key, so a client trains
only when its update is first needed: at an aggregation, every trip that started from the
same version as a buffered one trains in one executor call (the vectorized executor trains
them together). Calls are keyed by their order, which is the same on every executor, so the
processes and the vectorized executors run the same trips with the same batches.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from distlab.federated.server import finite_rows
from distlab.federated.types import Executor

# Stream tag of the server's draws of which idle client starts (clients.py and server.py hold
# the other tags).
START_STREAM = 13

STALENESS = ("sqrt", "constant", "poly")


class NoClientAvailable(ValueError):
    """No client is training and none can start (availability): the run cannot go on."""


@dataclass(frozen=True)
class BufferPlan:
    """What the asynchronous loop needs to know of a run: its length in server versions,
    the clients, the concurrency and K, the staleness rule and the server's step size."""

    rounds: int
    clients: int
    concurrency: int
    buffer: int
    seed: int = 0
    server_lr: float = 1.0
    staleness: str = "sqrt"
    exponent: float = 0.5
    eval_every: int = 0
    local_epochs: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.buffer <= self.concurrency <= self.clients:
            raise ValueError(
                "buffered plan needs 1 <= buffer <= concurrency <= clients (got "
                f"{self.buffer}, {self.concurrency}, {self.clients})"
            )
        if self.staleness not in STALENESS:
            raise ValueError(f"staleness {self.staleness!r} (allowed: {', '.join(STALENESS)})")


def staleness_weight(kind: str, tau: np.ndarray, exponent: float = 0.5) -> np.ndarray:
    """s(tau): 1 / sqrt(1 + tau) (FedBuff's), 1 (constant) or (1 + tau)^-exponent (poly)."""
    tau = np.asarray(tau, dtype=np.float64)
    if kind == "constant":
        return np.ones_like(tau)
    return (1.0 + tau) ** -(0.5 if kind == "sqrt" else exponent)


@dataclass
class Trip:
    """One client's trip: it starts from `version` at `start` and arrives at `finish`."""

    id: int
    client: int
    version: int
    start: float
    finish: float
    delta: torch.Tensor | None = None
    samples: int = 0
    loss: float = float("nan")


@dataclass
class Server:
    """The loop's state: the global model and its version, the versions' models that
    untrained trips started from, the trips in flight and the buffer."""

    current: torch.Tensor
    version: int = 0
    now: float = 0.0
    models: dict[int, torch.Tensor] = field(default_factory=dict)
    flying: list[tuple[float, int, Trip]] = field(default_factory=list)
    untrained: dict[int, list[Trip]] = field(default_factory=dict)
    buffer: list[Trip] = field(default_factory=list)
    trips: int = 0
    draws: int = 0
    calls: int = 0


def start_trips(plan: BufferPlan, server: Server, durations: np.ndarray, available) -> None:
    """Fill the free slots at server.now from the current version: clients drawn uniformly
    (seeded by the draw's number) from the idle ones `available(version, idle, now)` allows."""
    free = plan.concurrency - len(server.flying)
    if free <= 0:
        return
    busy = np.array([t.client for _, _, t in server.flying], dtype=np.int64)
    idle = np.setdiff1d(np.arange(plan.clients), busy)
    idle = idle[available(server.version, idle, server.now)]
    server.draws += 1
    rng = np.random.default_rng([plan.seed, START_STREAM, server.draws])
    chosen = rng.choice(idle, size=min(free, len(idle)), replace=False) if len(idle) else idle
    if len(chosen):
        server.models.setdefault(server.version, server.current)
    for client in chosen:
        server.trips += 1
        finish = server.now + float(durations[client])
        trip = Trip(server.trips, int(client), server.version, server.now, finish)
        heapq.heappush(server.flying, (finish, trip.id, trip))
        server.untrained.setdefault(server.version, []).append(trip)


def train_versions(executor: Executor, server: Server, versions: list[int]) -> None:
    """Train every untrained trip that started from `versions`, one executor call per
    version (a client that started twice from one version goes in a second call)."""
    for version in sorted(versions):
        group, start = server.untrained.pop(version), server.models.pop(version)
        while group:
            once = {t.client: t for t in reversed(group)}  # each client's first trip
            calls = sorted(once.values(), key=lambda t: t.client)
            group = [t for t in group if once[t.client] is not t]
            server.calls += 1
            clients = np.array([t.client for t in calls], dtype=np.int64)
            updates = executor.train(server.calls, start, clients)
            row = {int(c): i for i, c in enumerate(updates.clients)}
            for trip in calls:
                i = row[trip.client]
                trip.delta = updates.params[i] - start
                trip.samples, trip.loss = int(updates.num_examples[i]), float(updates.losses[i])


def aggregate(plan: BufferPlan, server: Server) -> dict:
    """The buffer's staleness-weighted step on the global model; the round event's figures.
    A non-finite update is left out of the sum (the divisor stays K) and named."""
    trips = server.buffer
    tau = np.array([server.version - t.version for t in trips], dtype=np.float64)
    weight = staleness_weight(plan.staleness, tau, plan.exponent)
    deltas = torch.stack([t.delta for t in trips])
    finite = finite_rows(deltas).numpy()
    scale = torch.from_numpy(np.where(finite, weight, 0.0) * plan.server_lr / len(trips))
    kept = deltas[torch.from_numpy(finite)]
    step = (scale[torch.from_numpy(finite)].to(deltas.dtype) @ kept) if len(kept) else 0.0
    server.current = server.current + step
    server.version += 1
    losses = [t.loss for t in trips if np.isfinite(t.loss)]
    return {
        "loss": float(np.mean(losses)) if losses else float("nan"),
        "samples": sum(t.samples for t in trips) * plan.local_epochs,
        "clients": [t.client for t in trips],
        "taus": tau.astype(np.int64),
        "staleness": float(tau.mean()),
        "max_staleness": int(tau.max()),
        "rejected": [t.client for t, ok in zip(trips, finite, strict=True) if not ok],
        "sim_seconds": server.now,
    }


def next_arrival(plan: BufferPlan, server: Server, durations, available) -> None:
    """Start clients in the free slots, then advance the clock to the next arrival and
    put it in the buffer."""
    start_trips(plan, server, durations, available)
    if not server.flying:
        raise NoClientAvailable(
            f"no client is available at simulated second {server.now:g} (version "
            f"{server.version}) and none is training: raise system.availability or widen "
            "the trace's windows"
        )
    finish, _, trip = heapq.heappop(server.flying)
    server.now = finish
    server.buffer.append(trip)


def train_buffered(
    plan: BufferPlan,
    executor: Executor,
    durations: np.ndarray,
    available: Callable[[int, np.ndarray, float], np.ndarray],
    start: torch.Tensor,
    recorder,
    on_eval: Callable[[int, torch.Tensor, float], None],
    on_round_end: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """The asynchronous loop: returns the final global parameters. `durations[c]` is client
    c's simulated seconds per trip; `available(version, clients, at)` which of them can
    start. A `round` event per aggregation carries the clock (`sim_seconds`) and the
    buffer's mean staleness; `on_eval(version, global, sim_seconds)` runs every
    plan.eval_every versions and after the last one."""
    server = Server(start.clone())
    every = plan.eval_every or 1
    recorder.phase("train", total=plan.rounds, unit="round")
    begin = time.perf_counter()
    while server.version < plan.rounds:
        next_arrival(plan, server, durations, available)
        if len(server.buffer) < plan.buffer:
            continue
        versions = {t.version for t in server.buffer if t.delta is None}
        train_versions(executor, server, [v for v in versions if v in server.untrained])
        combine = time.perf_counter()
        fields = aggregate(plan, server)
        server.buffer = []
        now = time.perf_counter()
        recorder.round(
            server.version,
            duration=now - begin,
            aggregate_seconds=round(now - combine, 6),
            **fields,
        )
        begin = now
        if server.version % every == 0 or server.version == plan.rounds:
            on_eval(server.version, server.current, server.now)
        if on_round_end is not None:
            on_round_end(server.version, server.current)
    recorder.phase("train_end", rounds=plan.rounds, trips=server.trips, sim_seconds=server.now)
    return server.current
