"""Network what-if: predicted step time and speedup on a network this machine does not have.

The alpha-beta model (Hockney 1994, "The communication challenge for MPP: Intel Paragon and
Meiko CS-2", Parallel Computing 20(3)) prices a message of m bytes at alpha + m / beta:
alpha is the latency in seconds, beta the link's bandwidth in bytes per second. From one
run's measured compute per sample and its model size, `predict` gives the step (or round)
time, samples per second and speedup for N = 1..1024 workers on each network asked for;
`whatif_plot.plot_whatif` draws them beside the speedups that were measured. It is a model,
not a measurement: no congestion, no stragglers, no overlap of compute and communication,
and every gradient or model travels as float32 (4 bytes per parameter).

    rows, reason = predict(summary, parse_networks("1gbit,10gbit"), parse_latency("50us"))

The model loads neither torch nor matplotlib; the figure is in whatif_plot.py.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distlab.experiments.whatif_link import MeasuredLink, is_link_file, is_number, read_link
from distlab.topology import TOPOLOGIES, build_graph

BYTES_PER_PARAM = 4  # float32 on the wire
WORKERS = tuple(2**i for i in range(11))  # 1, 2, 4, ..., 1024
MODEL_NOTE = "alpha-beta model, not a measurement"

# Decimal prefixes, as network speeds are quoted (1 Gbit/s = 1e9 bit/s).
PREFIXES = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
BANDWIDTH_FORMS = (
    "a number > 0 with kbit, mbit, gbit, tbit, kbps, mbps, gbps or tbps, all bits per second, "
    "e.g. 100mbit, 2.5gbit"
)
BANDWIDTH = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([kmgt])(?:bit|bps)", re.IGNORECASE)
# Divisors, not factors: 50 / 1e6 is exactly 5e-05 in floating point, 50 * 1e-6 is not.
PER_SECOND = {"ns": 1e9, "us": 1e6, "µs": 1e6, "μs": 1e6, "ms": 1e3, "s": 1.0}
LATENCY = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s)", re.IGNORECASE)


class NoModel(ValueError):
    """A run the model cannot price; its message is the reason shown instead of rows."""


# --- parsing ------------------------------------------------------------------------------------


def parse_bandwidth(text: str) -> float:
    """Bytes per second of a link written as bits per second, case-insensitive.

    >>> parse_bandwidth("1gbit"), parse_bandwidth("100Mbit"), parse_bandwidth("2.5gbps")
    (125000000.0, 12500000.0, 312500000.0)
    """
    match = BANDWIDTH.fullmatch(text.strip())
    value = float(match.group(1)) if match else 0.0
    if not match or value <= 0:
        raise ValueError(f"--network: unknown speed {text!r} (allowed: {BANDWIDTH_FORMS})")
    return value * PREFIXES[match.group(2).lower()] / 8


def parse_latency(text: str) -> float:
    """Seconds of a latency written with its unit: ns, us (or µs), ms or s.

    >>> parse_latency("50us"), parse_latency("2ms"), parse_latency("0s")
    (5e-05, 0.002, 0.0)
    """
    match = LATENCY.fullmatch(text.strip())
    if not match:
        raise ValueError(
            f"--latency must be a time >= 0 with a unit ns, us, ms or s, e.g. 50us (got {text!r})"
        )
    return float(match.group(1)) / PER_SECOND[match.group(2).lower()]


def parse_networks(text: str) -> list[tuple]:
    """Comma-separated links, in the order given, each once: a named speed as (label, bytes
    per second), priced with --latency; a link file of `distlab probe-network` (a path: it
    ends in .json or holds a /) as (file name, bytes per second, alpha), its own latency.

    >>> parse_networks("1gbit, 10gbit")
    [('1gbit', 125000000.0), ('10gbit', 1250000000.0)]
    """
    parts = [part.strip() for part in text.split(",")]
    if not any(parts):
        raise ValueError(f"--network needs at least one speed, e.g. 1gbit,10gbit (got {text!r})")
    unique = dict.fromkeys(p if is_link_file(p) else p.lower() for p in parts if p)
    return [read_link(p) if is_link_file(p) else (p, parse_bandwidth(p)) for p in unique]


# --- communication time per step or round -------------------------------------------------------


def ring_allreduce_seconds(n: int, params: int, alpha: float, beta: float) -> float:
    """Ring allreduce of P float32 values over N workers: 2(N-1)(alpha + P*4/(N*beta)).

    Reduce-scatter then allgather, each N-1 steps moving one N-th of the vector (Thakur,
    Rabenseifner & Gropp 2005, "Optimization of Collective Communication Operations in
    MPICH", IJHPCA 19(1)). One worker exchanges nothing.

    >>> round(ring_allreduce_seconds(4, 1_000_000, 50e-6, 1.25e8), 6)
    0.0483
    """
    if n == 1:
        return 0.0
    return 2 * (n - 1) * (alpha + params * BYTES_PER_PARAM / (n * beta))


def param_server_seconds(n: int, params: int, alpha: float, beta: float) -> float:
    """One synchronous parameter-server step: 2*alpha + N*2*P*4/beta.

    Every worker pushes its gradient and pulls the model, and all 2N messages cross the
    server's one link, which is the bottleneck (Li et al. 2014, "Scaling Distributed Machine
    Learning with the Parameter Server", OSDI). Even one worker talks to the server.

    >>> round(param_server_seconds(4, 1_000_000, 50e-6, 1.25e8), 6)
    0.2561
    """
    return 2 * alpha + n * 2 * params * BYTES_PER_PARAM / beta


def fedavg_round_seconds(clients: int, params: int, alpha: float, beta: float) -> float:
    """One FedAvg round with K clients: 2*alpha + K*2*P*4/beta.

    The server sends the model to each sampled client and receives each client's model back
    (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
    Decentralized Data"), all through the server's link.
    """
    return 2 * alpha + clients * 2 * params * BYTES_PER_PARAM / beta


def gossip_round_seconds(degree: int, params: int, alpha: float, beta: float) -> float:
    """One gossip mixing round: d*(alpha + P*4/beta) for a worker with d neighbours.

    Each worker sends its model to and receives one from every neighbour (Lian et al. 2017,
    "Can Decentralized Algorithms Outperform Centralized Algorithms?"). On a full-duplex link
    a send and a receive overlap, so a neighbour costs one message time, and the round is
    bound by the degree, not by N.
    """
    return degree * (alpha + params * BYTES_PER_PARAM / beta)


def local_sgd_seconds(n: int, params: int, alpha: float, beta: float, period: float) -> float:
    """Local SGD's communication per step: one ring allreduce of the model every H steps,
    ring/H (Stich 2019, "Local SGD Converges Fast and Communicates Little"). `period: end`
    averages once in the whole run: H is then the run's step count."""
    return ring_allreduce_seconds(n, params, alpha, beta) / period


def gossip_degree(topology: str, n: int, mean_degree: float | None = None) -> float | None:
    """Neighbours of the busiest worker among N, who sets the round's pace (the star's hub
    talks to all others), from the graph the gossip strategy builds; random-k keeps the
    run's measured mean degree. None where the graph at N is unknown (a graph file) or does
    not exist (a torus on a prime N).

    >>> [gossip_degree("ring", 8), gossip_degree("star", 8), gossip_degree("torus", 7)]
    [2, 7, None]
    """
    if n == 1:
        return 0
    if topology == "random-k":
        return min(mean_degree, n - 1) if mean_degree else None
    if topology not in TOPOLOGIES or topology in ("file", "random-k"):
        return None
    try:
        return int(build_graph(topology, n).sum(axis=1).max())
    except ValueError:
        return None


# --- what one run tells the model ---------------------------------------------------------------


# Communication seconds of one step or round at (N, alpha, beta); None: no such network at N.
Comm = Callable[[int, float, float], float | None]


@dataclass(frozen=True)
class Workload:
    """One run, as the model sees it: compute seconds per sample on one dedicated worker, the
    samples a unit (step or round) processes at N, the most any one worker processes, and the
    communication of one unit at N."""

    unit: str
    compute_per_sample: float
    samples: Callable[[int], float | None]  # None: this N is not possible for the run
    slowest: Callable[[int], float]
    comm: Comm


def workload(s: dict[str, Any]) -> Workload:
    """The run's workload, or NoModel with the reason it has none."""
    from distlab.api import network_model  # the strategy's spec says which pattern

    pattern, reason = network_model(s.get("strategy"))
    if pattern is None:
        raise NoModel(reason)
    if s.get("status") != "completed":
        raise NoModel(f"run {s.get('status') or 'status unknown'}: no measured step time")
    return federated(s) if pattern == "fedavg" else data_parallel(s, STEP_COMM[pattern])


def need(s: dict[str, Any], *keys: str) -> list[Any]:
    """The summary's figures at `keys`, all known and positive, or NoModel naming the first
    that is not: the model never stands in a number the run did not give."""
    values = [s.get(k) for k in keys]
    for key, value in zip(keys, values, strict=True):
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise NoModel(f"summary has no {key}: nothing to predict from")
    return values


def compute_per_sample(s: dict[str, Any], ranks: int) -> float:
    """Seconds one worker spends per sample: train_seconds * ranks / samples, which is
    (train_seconds / steps) / per-worker batch when every step is full.

    The measured time still holds this machine's own exchanges (local sockets, not free),
    so the prediction is pessimistic by that much. Ranks beyond the cores time-share them,
    so only min(ranks, cores) count as working in parallel."""
    seconds, samples = need(s, "train_seconds", "samples")
    cores = (s.get("environment") or {}).get("cores")
    parallel = min(ranks, cores) if isinstance(cores, int) and cores > 0 else ranks
    return seconds * parallel / samples


def data_parallel(s: dict[str, Any], step_comm: Callable[[dict, int], Comm]) -> Workload:
    """Steps of a data-parallel run: a global batch is cut into N chunks (the slowest worker
    gets the largest, and N cannot exceed the batch), a per-worker batch is N batches."""
    batch, workers, params, _ = need(s, "batch_size", "workers", "params", "steps")
    comm = step_comm(s, params)
    c = compute_per_sample(s, workers)
    meaning = s.get("batch_size_meaning") or ""
    if meaning.startswith("global"):
        return Workload(
            "step", c, lambda n: batch if n <= batch else None, lambda n: math.ceil(batch / n), comm
        )
    if meaning.startswith("per "):
        return Workload("step", c, lambda n: n * batch, lambda n: batch, comm)
    raise NoModel(f"unknown batch size meaning {meaning!r}: per worker or global?")


def ring_comm(s: dict[str, Any], params: int) -> Comm:
    return lambda n, a, b: ring_allreduce_seconds(n, params, a, b)


def server_comm(s: dict[str, Any], params: int) -> Comm:
    return lambda n, a, b: param_server_seconds(n, params, a, b)


def local_ring_comm(s: dict[str, Any], params: int) -> Comm:
    """Local SGD: the run's own averagings per step (its period, a single one for `period:
    end`), carrying twice the model when momenta are averaged too; warmup allreduce steps
    and evaluation averagings carry the model once."""
    steps, averagings = need(s, "steps", "averagings")
    payload = s.get("bytes_per_averaging_analytic")
    factor = round(payload / (2 * params * BYTES_PER_PARAM)) if payload else 1
    others = (s.get("allreduce_steps") or 0) + (s.get("eval_averagings") or 0)

    def comm(n: int, a: float, b: float) -> float:
        seconds = local_sgd_seconds(n, factor * params, a, b, steps / averagings)
        return seconds + (local_sgd_seconds(n, params, a, b, steps / others) if others else 0.0)

    return comm


def gossip_comm(s: dict[str, Any], params: int) -> Comm:
    """Gossip: the run's mixing rounds per step (its period, steps / rounds), each priced at
    the busiest worker's degree on the topology at N. The consensus measurement each round
    (an allreduce) is a measurement, not training: left out."""
    steps, rounds = need(s, "steps", "rounds")
    topology, mean_degree = str(s.get("topology")), s.get("mean_degree")
    if gossip_degree(topology, 4, mean_degree) is None:
        raise NoModel(f"gossip topology {topology!r}: its degree at another N is unknown")

    def comm(n: int, a: float, b: float) -> float | None:
        degree = gossip_degree(topology, n, mean_degree)
        if degree is None:
            return None
        return gossip_round_seconds(degree, params, a, b) * rounds / steps

    return comm


STEP_COMM = {
    "ring": ring_comm,
    "server": server_comm,
    "local-ring": local_ring_comm,
    "gossip": gossip_comm,
}


def federated(s: dict[str, Any]) -> Workload:
    """FedAvg rounds: N clients per round, each on its own machine doing the measured run's
    average client work (its samples per round per client). K, the clients per measured
    round, comes from the logical bytes per round, 2*P*4*K."""
    rounds, params, logical, samples = need(
        s, "rounds", "params", "bytes_per_round_logical", "samples"
    )
    clients = round(logical / (2 * params * BYTES_PER_PARAM))
    hosts = max(1, (s.get("processes") or 1) - 1)  # rank 0 serves; one process trains all
    per_client = samples / (rounds * clients)
    return Workload(
        "round",
        compute_per_sample(s, min(hosts, clients)),
        lambda n: n * per_client,
        lambda n: per_client,
        lambda n, a, b: fedavg_round_seconds(n, params, a, b),
    )


# --- prediction ---------------------------------------------------------------------------------


def predict(
    summary: dict[str, Any],
    networks: Sequence[tuple[str, float]],
    latency: float,
    workers: Sequence[int] = WORKERS,
    name: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Rows of predicted time per step (or round), samples per second and speedup at each N
    on each network, and None; or no rows and the reason the run has no model.

    At N workers one unit takes compute(N) + comm(N): compute is the measured seconds per
    sample times the samples the busiest worker processes (B for a per-worker batch,
    ceil(B/N) for a global batch B, which rules out N > B), comm the pattern's alpha-beta
    time. Samples per second at N is the unit's samples over that time, and speedup is it
    over the same at N = 1 on the same network, so N = 1 is 1 by definition. The measured
    time still holds the run's own exchanges on this machine, so the prediction is
    pessimistic by that much.
    """
    check_workers(workers)
    check_latency(latency)
    try:
        load = workload(summary)
    except NoModel as exc:
        return [], str(exc)
    run = name or run_name(summary)
    rows = []
    for link in networks:
        label, beta, alpha = (*link, latency) if len(link) == 2 else link
        if isinstance(link, MeasuredLink) and len(link.sizes) >= 2:
            alpha, beta = link.at(message_bytes(summary))
        base = estimate(load, 1, alpha, beta)["samples_per_second"]
        for n in workers:
            figures = estimate(load, n, alpha, beta)
            if figures is None:
                continue
            row = {"run": run, "strategy": summary["strategy"], "network": label}
            row |= {"bandwidth_bytes_per_second": beta, "latency_seconds": alpha}
            row |= {"workers": n, "unit": load.unit, **figures}
            row["speedup"] = row["samples_per_second"] / base
            row["efficiency"] = row["speedup"] / n
            rows.append({k: significant(v) for k, v in row.items()})
    return rows, None


def message_bytes(s: dict[str, Any]) -> float:
    """Bytes of one exchange of the run's model (float32), where a link is priced."""
    params = s.get("params")
    return params * BYTES_PER_PARAM if is_number(params) and params > 0 else 4e5


def estimate(load: Workload, n: int, alpha: float, beta: float) -> dict[str, float] | None:
    """Compute, communication and total seconds of one unit at N, and samples per second;
    None where the run has no such N (more chunks than a global batch, a torus on a prime)."""
    samples, comm = load.samples(n), load.comm(n, alpha, beta)
    if samples is None or comm is None:
        return None
    compute = load.compute_per_sample * load.slowest(n)
    seconds = compute + comm
    return {
        "compute_seconds": compute,
        "comm_seconds": comm,
        "unit_seconds": seconds,
        "samples_per_second": samples / seconds,
    }


def check_workers(workers: Sequence[int]) -> None:
    bad = [n for n in workers if not isinstance(n, int) or isinstance(n, bool) or n < 1]
    if bad or not workers:
        raise ValueError(f"worker counts must be integers >= 1 (got {list(workers)!r})")


def check_latency(latency: float) -> None:
    if not isinstance(latency, int | float) or not math.isfinite(latency) or latency < 0:
        raise ValueError(f"--latency must be a finite number of seconds >= 0 (got {latency!r})")


def run_name(s: dict[str, Any]) -> str:
    return Path(s["run_dir"]).name if s.get("run_dir") else str(s.get("strategy"))


def significant(value: Any) -> Any:
    """Floats to 6 significant digits: the model is not more exact than that."""
    return float(f"{value:.6g}") if isinstance(value, float) else value
