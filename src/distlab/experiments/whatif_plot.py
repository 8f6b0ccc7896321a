"""whatif.png: the network what-if's predicted speedups drawn beside the measured ones.

One panel per network, log-log, a line per run and the ideal speedup N; the model itself
(parsing, workloads, predictions) is in whatif.py. The figure says it is a model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from distlab.experiments.whatif import MODEL_NOTE
from distlab.plots import check_plot, class_colors, new_figure, save_figure


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
    latencies = {r["latency_seconds"] for r in rows}
    latency = format_seconds(rows[0]["latency_seconds"])
    # a link file brings its own fitted latency: then each panel names its own
    said = f"latency {latency}" if len(latencies) == 1 else "latency in each panel's title,"
    title = f"Predicted speedup: {MODEL_NOTE}\n{said} per message"
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
    latency = format_seconds(rows[0]["latency_seconds"])
    ax.set_title(f"{rows[0]['network']} ({format_rate(beta)}, {latency})")
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
            return f"{beta / scale:.3g} {unit}"
    return f"{beta:g} B/s"


def format_seconds(seconds: float) -> str:
    """Seconds as text in the unit that reads best: 50 us, 2 ms, 0 s."""
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:g} ns" if seconds else "0 s"
