"""Network what-if: predicted step time and speedup on a network this machine does not have.

The alpha-beta model (Hockney 1994, "The communication challenge for MPP: Intel Paragon and
Meiko CS-2", Parallel Computing 20(3)) prices a message of m bytes at alpha + m / beta:
alpha is the latency in seconds, beta the link's bandwidth in bytes per second. From one
run's measured compute per sample and its model size, `predict` gives the step (or round)
time, samples per second and speedup for N = 1..1024 workers on each network asked for;
`plot_whatif` draws them beside the speedups that were measured. It is a model, not a
measurement: no congestion, no stragglers, no overlap of compute and communication, and
every gradient or model travels as float32 (4 bytes per parameter).

    rows, reason = predict(summary, parse_networks("1gbit,10gbit"), parse_latency("50us"))

numpy and matplotlib only: reading a summary and drawing the result loads no torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from distlab.plots import check_plot, class_colors, new_figure, save_figure
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


# Which communication pattern each strategy's traffic follows. A table here, not a branch
# per strategy elsewhere: a new strategy with one of these patterns is one line.
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


def parse_networks(text: str) -> list[tuple[str, float]]:
    """Comma-separated link speeds as (label, bytes per second), in the order given, each once.

    >>> parse_networks("1gbit, 10gbit")
    [('1gbit', 125000000.0), ('10gbit', 1250000000.0)]
    """
    labels = [part.strip().lower() for part in text.split(",")]
    if not any(labels):
        raise ValueError(f"--network needs at least one speed, e.g. 1gbit,10gbit (got {text!r})")
    unique = list(dict.fromkeys(label for label in labels if label))
    return [(label, parse_bandwidth(label)) for label in unique]


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
    for label, beta in networks:
        base = estimate(load, 1, latency, beta)["samples_per_second"]
        for n in workers:
            figures = estimate(load, n, latency, beta)
            if figures is None:
                continue
            row = {"run": run, "strategy": summary["strategy"], "network": label}
            row |= {"bandwidth_bytes_per_second": beta, "latency_seconds": latency}
            row |= {"workers": n, "unit": load.unit, **figures}
            row["speedup"] = row["samples_per_second"] / base
            row["efficiency"] = row["speedup"] / n
            rows.append({k: significant(v) for k, v in row.items()})
    return rows, None


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


# --- the figure ---------------------------------------------------------------------------------


def plot_whatif(
    rows: list[dict[str, Any]], measured: list[dict[str, Any]], path: str | Path
) -> Path:
    """One panel per network: predicted speedup against N (log-log), a line per run, the
    ideal speedup N, and the speedups measured on this machine (dicts with strategy, workers,
    speedup) as markers in their strategy's color. The figure says it is a model."""
    path = check_plot(path)
    if not rows:
        raise ValueError("no predicted rows to plot (every run lacked a network model)")
    networks = list(dict.fromkeys(r["network"] for r in rows))
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    colors = dict(zip(strategies, class_colors(len(strategies)), strict=True))
    cols = min(3, len(networks))
    fig = new_figure(max(7.5, 1 + 4.6 * cols), 2.0 + 4.0 * math.ceil(len(networks) / cols))
    axes = fig.subplots(math.ceil(len(networks) / cols), cols, squeeze=False, sharey=True)
    for ax, network in zip(axes.flat, networks, strict=False):
        draw_network(ax, [r for r in rows if r["network"] == network], colors)
        draw_measured(ax, measured, colors)
    for ax in list(axes.flat)[len(networks) :]:
        ax.set_visible(False)
    fig.suptitle(figure_title(rows), fontsize=11)
    add_legend(fig, axes, measured)
    return save_figure(fig, path)


def figure_title(rows: list[dict[str, Any]]) -> str:
    """Says it is a model, at which latency, and why a line may stop short."""
    latency = format_seconds(rows[0]["latency_seconds"])
    title = f"Predicted speedup: {MODEL_NOTE}\nlatency {latency} per message"
    if max(r["workers"] for r in rows) > min(run_reach(rows).values()):
        title += "\na global batch B splits into at most B chunks: its line stops at N = B"
    return title


def add_legend(fig: Figure, axes: np.ndarray, measured: list[dict[str, Any]]) -> None:
    """One legend for all panels; the measured points get one neutral entry, their color
    being the strategy's."""
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_legend_handles_labels()[0]}
    if any(m.get("speedup") and m.get("workers") for m in measured):
        handles["measured"] = Line2D(
            [], [], ls="", marker="o", ms=7, mfc="white", mec="black",
            label="measured on this machine (color: strategy)",
        )  # fmt: skip
    if any(m.get("flags") for m in measured):
        handles["flagged"] = Line2D(
            [], [], ls="", marker="o", ms=10, mfc="none", mec="tab:red",
            label="measured, flagged in the report (disturbed or above ideal)",
        )  # fmt: skip
    fig.legend(handles=list(handles.values()), loc="outside lower center", ncols=3, fontsize=8)


def run_reach(rows: list[dict[str, Any]]) -> dict[str, int]:
    """The largest N each run has a prediction for."""
    reach: dict[str, int] = {}
    for r in rows:
        reach[r["run"]] = max(reach.get(r["run"], 0), r["workers"])
    return reach


def draw_network(ax: Axes, rows: list[dict[str, Any]], colors: dict[str, Any]) -> None:
    """The ideal line and one predicted line per run; runs of one strategy share its color
    and differ in line style."""
    top = max(r["workers"] for r in rows)
    ax.plot([1, top], [1, top], color="0.6", ls=":", lw=1.2, label="ideal (speedup = N)")
    styles: dict[str, int] = {}
    for run in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == run]
        strategy = mine[0]["strategy"]
        style = ("-", "--", "-.", (0, (1, 1)))[styles.get(strategy, 0) % 4]
        styles[strategy] = styles.get(strategy, 0) + 1
        x, y = [r["workers"] for r in mine], [r["speedup"] for r in mine]
        ax.plot(x, y, color=colors[strategy], ls=style, lw=1.6, label=f"{run} ({strategy})")
    beta = rows[0]["bandwidth_bytes_per_second"]
    ax.set_title(f"{rows[0]['network']} ({format_rate(beta)})")
    finish_axes(ax, top, any(r["unit"] == "round" for r in rows))


def draw_measured(ax: Axes, measured: list[dict[str, Any]], colors: dict[str, Any]) -> None:
    points = [m for m in measured if m.get("speedup") and m.get("workers")]
    for m in points:
        color = colors.get(m.get("strategy"), "black")
        ax.plot(
            m["workers"], m["speedup"], "o", ms=7, color=color, mec="black", zorder=3,
            label="_measured",
        )  # fmt: skip
        if m.get("flags"):  # disturbed, or above ideal: the report's flags say why
            ax.plot(m["workers"], m["speedup"], "o", ms=13, mfc="none", mec="tab:red", mew=1.5,
                    zorder=4, label="_flagged")  # fmt: skip


def finish_axes(ax: Axes, top: int, rounds: bool) -> None:
    """Log-log axes with plain numbers: N at powers of two, speedups as 0.1, 1, 10."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(FixedLocator([2**i for i in range(top.bit_length())]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlim(0.8, top * 1.25)
    xlabel = "workers N (clients per round for FedAvg)" if rounds else "workers N"
    ax.set(xlabel=xlabel, ylabel="speedup over N = 1")
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(alpha=0.3, which="both")


def format_rate(beta: float) -> str:
    """Bytes per second as text: 125 MB/s, 1.25 GB/s."""
    for scale, unit in ((1e9, "GB/s"), (1e6, "MB/s"), (1e3, "kB/s")):
        if beta >= scale:
            return f"{beta / scale:g} {unit}"
    return f"{beta:g} B/s"


def format_seconds(seconds: float) -> str:
    """Seconds as text in the unit that reads best: 50 us, 2 ms, 0 s."""
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if seconds >= scale:
            return f"{seconds / scale:g} {unit}"
    return f"{seconds / 1e-9:g} ns" if seconds else "0 s"
