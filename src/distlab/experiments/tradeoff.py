"""tradeoff.png: what a run bought with what it spent. Final accuracy against the bytes it
measured (log axis, the Pareto front of the runs drawn), and test accuracy against the
simulated clock (matplotlib on the Agg canvas, no pyplot).

A run is on the Pareto front when no other run reached at least its accuracy with at most
its bytes and did better on one of the two; the front is the attainable staircase.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter, LogFormatter

from distlab.config_sections import SystemConfig
from distlab.experiments.scaling import byte_figures
from distlab.plots import check_plot, class_colors, new_figure, save_figure

# The events whose end the simulated clock stamps (sim_seconds, cumulative from the start of
# training).
TIMED_KINDS = ("step", "round", "eval")
DENSE = "dense"
# The compress.* setting that tells two runs of one compressor apart, as a label shows it.
SETTINGS = {"topk": "ratio", "randk": "ratio", "qsgd": "levels", "powersgd": "rank"}
SHORT = {"ratio": "", "levels": "s=", "rank": "r="}


class ByteLogFormatter(LogFormatter):
    """Log-axis labels in bytes ("10 MB", not "10^7"); matplotlib still chooses which minor
    ticks get a label when the axis spans less than a decade."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return EngFormatter(unit="B", places=0)(x)


def bytes_measured(summary: dict[str, Any]) -> int | None:
    """Every byte the run's ranks sent and received (communication.png's total); None when
    nothing was counted, or when one process handed its collectives to itself."""
    total = byte_figures(summary)["total_bytes"]
    return total or None


# A run's point: a circle at the bytes measured, a diamond at the formula's total.
MARKERS = {"measured": "o", "formula": "D"}
BYTES_LABEL = {
    frozenset({"measured"}): "bytes measured, all ranks (log)",
    frozenset({"formula"}): "bytes by the formula, all clients (log)",
    frozenset({"measured", "formula"}): "bytes: measured (o), by the formula (diamond) (log)",
}


def bytes_spent(summary: dict[str, Any]) -> tuple[float | None, str | None]:
    """The bytes a run's point stands at and where they come from: measured by the
    Communicator, else the strategy's formula total (a federated run whose clients train in
    one process moves nothing it could count); (None, None) when neither is known."""
    measured = bytes_measured(summary)
    if measured:
        return measured, "measured"
    logical = summary.get("bytes_total_logical")
    return (logical, "formula") if logical else (None, None)


def sim_seconds(run: dict[str, Any]) -> float | None:
    """The run's simulated seconds: the summary's figure, else the last stamped event's."""
    figure = run["summary"].get("sim_seconds")
    if figure is not None:
        return figure
    stamped = [e["sim_seconds"] for e in run["events"] if sim_stamp(e) is not None]
    return stamped[-1] if stamped else None


def round_or_none(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def sim_stamp(event: dict[str, Any]) -> float | None:
    """The simulated clock at the end of a step, round or eval event; None elsewhere."""
    return event.get("sim_seconds") if event.get("kind") in TIMED_KINDS else None


def sim_time_to_accuracy(events: list[dict[str, Any]], target: float) -> float | None:
    """The simulated clock at the first eval at or above `target`; None when no eval with a
    simulated time got there."""
    evals = [e for e in events if e.get("kind") == "eval" and e.get("sim_seconds") is not None]
    hit = next((e for e in evals if (e.get("accuracy") or 0.0) >= target), None)
    return round(hit["sim_seconds"], 3) if hit else None


def row_figures(run: dict[str, Any], target: float | None) -> dict[str, Any]:
    """The trade-off columns of a run's comparison row; unknown figures are None."""
    s = run["summary"]
    return {
        "compressors": compressor_label(run) if s.get("compressors") else None,
        "compression_ratio": s.get("compression_ratio"),
        "bytes_measured": bytes_measured(s),
        "bytes_spent": bytes_spent(s)[0],
        "bytes_source": bytes_spent(s)[1],
        "sim_seconds": round_or_none(sim_seconds(run)),
        "sim_seconds_to_target": (
            sim_time_to_accuracy(run["events"], target) if target is not None else None
        ),
    }


def compressor_label(run: dict[str, Any]) -> str:
    """The run's chain with each compressor's setting, '+ef' with error feedback: 'topk 0.01
    > fp16 +ef', 'qsgd s=127'; 'dense' when it compressed nothing."""
    names = run["summary"].get("compressors")
    if not names:
        return DENSE
    settings = (run.get("config") or {}).get("compress") or {}
    event = next((e for e in run["events"] if e.get("phase") == "compress"), {})
    feedback = event.get("error_feedback", settings.get("error_feedback"))
    parts = []
    for name in map(str, names):
        key = SETTINGS.get(name)
        value = settings.get(key) if key else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            name = f"{name} {SHORT[key]}{value:g}"
        parts.append(name)
    return " > ".join(parts) + (" +ef" if feedback else "")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (bytes, accuracy) points no other point dominates (fewer or as many
    bytes and at least the accuracy, better in one), in order of bytes.

    >>> pareto_front([(10, 0.9), (100, 0.95), (100, 0.8), (5, 0.5)])
    [3, 0, 1]
    """

    def dominated(i: int) -> bool:
        b, a = points[i]
        return any(bj <= b and aj >= a and (bj < b or aj > a) for bj, aj in points)

    front = [i for i in range(len(points)) if not dominated(i)]
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))


def point_labels(runs: list[dict[str, Any]]) -> list[str]:
    """Each run's compressors, numbered '#2', '#3' where several runs share one chain (the
    legend names each run)."""
    chains = [compressor_label(r) for r in runs]
    labels = []
    for i, chain in enumerate(chains):
        seen = chains[:i].count(chain)
        labels.append(f"{chain} #{seen + 1}" if chains.count(chain) > 1 else chain)
    return labels


def legend_labels(runs: list[dict[str, Any]]) -> list[str]:
    """Each run's name, with its compressors when some run compressed."""
    chains = [compressor_label(r) for r in runs]
    if all(chain == DENSE for chain in chains):
        return [run["name"] for run in runs]
    return [f"{run['name']}: {chain}" for run, chain in zip(runs, chains, strict=True)]


def panels(runs: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    """'bytes' when some run has bytes and an accuracy and the runs differ in what they
    spent (a sweep of dense runs that all move the same bytes trades nothing off), 'time'
    when some run's evals carry simulated seconds; empty when neither (no figure)."""
    found = []
    spent = {r["bytes_spent"] for r in rows if r["bytes_spent"] and r["final_accuracy"] is not None}
    varied = len(spent) > 1 or len(rows) == 1 or any(r["compressors"] for r in rows)
    if spent and varied:
        found.append("bytes")
    # every run keeps a simulated clock; it is a trade-off worth a panel where some run
    # compressed what it sent or gave its clients speeds and links of their own
    chosen = any(r["compressors"] for r in rows) or any(set_system(run) for run in runs)
    if chosen and any(timed_evals(run) for run in runs):
        found.append("time")
    return found


def set_system(run: dict[str, Any]) -> bool:
    """Whether the run's config sets a system.* key (speeds, links, a trace, a deadline)."""
    system = (run.get("config") or {}).get("system")
    return bool(system) and SystemConfig.model_validate(system) != SystemConfig()


def timed_evals(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        e
        for e in run["events"]
        if e.get("kind") == "eval"
        and e.get("sim_seconds") is not None
        and e.get("accuracy") is not None
    ]


def plot_tradeoff(
    runs: list[dict[str, Any]], rows: list[dict[str, Any]], path: str | Path
) -> Path | None:
    """tradeoff.png: final accuracy against bytes measured with the Pareto front, and test
    accuracy against simulated seconds, a panel for each the runs can fill; None (nothing
    written) when they fill neither. `rows` are the runs' comparison rows, in order."""
    path = check_plot(path)
    shown = panels(runs, rows)
    if not shown:
        return None
    fig = new_figure(6.5 * len(shown) + 0.5, 5.6)
    axes = dict(zip(shown, fig.subplots(1, len(shown), squeeze=False)[0], strict=True))
    colors = class_colors(len(runs))
    labels = point_labels(runs)
    if "bytes" in axes:
        draw_bytes(axes["bytes"], rows, labels, colors)
    if "time" in axes:
        draw_time(axes["time"], runs, colors)
    handles = [
        Line2D([], [], color=c, marker="o", ms=5, label=label)
        for label, c in zip(legend_labels(runs), colors, strict=True)
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)), fontsize=8)
    return save_figure(fig, path)


def draw_bytes(ax: Axes, rows: list[dict[str, Any]], labels: list[str], colors: list) -> None:
    """One point per run (a cross for a run that did not complete, left off the front), each
    labelled by its compressors, and the completed runs' Pareto front as a staircase."""
    known = [
        (row, label, color)
        for row, label, color in zip(rows, labels, colors, strict=True)
        if row["bytes_spent"] and row["final_accuracy"] is not None
    ]
    done = [k for k in known if k[0]["status"] == "completed"]
    points = [(k[0]["bytes_spent"], k[0]["final_accuracy"]) for k in done]
    front = [points[i] for i in pareto_front(points)]
    if front:
        xs, ys = zip(*front, strict=True)
        ax.step(xs, ys, where="post", color="0.4", lw=1.2, ls="--", zorder=1)
        ax.scatter(xs, ys, s=160, facecolors="none", edgecolors="0.3", zorder=2)
    seen: list[tuple[float, float]] = []
    for row, label, color in known:
        x, y = row["bytes_spent"], row["final_accuracy"]
        marker = "x" if row["status"] != "completed" else MARKERS[row["bytes_source"]]
        ax.scatter([x], [y], color=color, marker=marker, s=40, zorder=3)
        # runs on one point (same bytes, same accuracy) get their labels stacked, not overlaid
        above = 4 + 9 * seen.count((x, y))
        seen.append((x, y))
        ax.annotate(label, (x, y), xytext=(5, above), textcoords="offset points", fontsize=7)
    sources = {row["bytes_source"] for row, _, _ in known}
    ax.set(xscale="log", xlabel=BYTES_LABEL[frozenset(sources)], ylabel="final test accuracy")
    ax.margins(x=0.12)  # room for the labels of the rightmost points
    ax.xaxis.set_major_formatter(ByteLogFormatter())
    ax.xaxis.set_minor_formatter(ByteLogFormatter(labelOnlyBase=False))
    ax.set_title("Accuracy against bytes (ringed, dashed: the Pareto front)")
    ax.legend(
        handles=[
            Line2D([], [], color="0.4", ls="--", marker="o", mfc="none", label="Pareto front")
        ],
        loc="lower right",
        fontsize=8,
    )
    finish(ax)


def draw_time(ax: Axes, runs: list[dict[str, Any]], colors: list) -> None:
    """Test accuracy at each eval against the simulated clock, one curve per run that has it
    (a run that did not complete dashed)."""
    for run, color in zip(runs, colors, strict=True):
        evals = timed_evals(run)
        if not evals:
            continue
        ls = "-" if run["summary"].get("status") == "completed" else "--"
        ax.plot(
            [e["sim_seconds"] for e in evals],
            [e["accuracy"] for e in evals],
            color=color,
            ls=ls,
            marker="o",
            ms=3,
        )
    ax.set(xlabel="simulated seconds", ylabel="test accuracy")
    ax.set_title("Accuracy against simulated time")
    finish(ax)


def finish(ax: Axes) -> None:
    """Grid, and accuracy kept within [0, 1.01] (autoscale around 1.0 would show more)."""
    ax.grid(alpha=0.3, which="both")
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, 0.0), min(high, 1.01))
