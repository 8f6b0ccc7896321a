"""curves.png: training loss and test accuracy of many runs, per step, per round and over
seconds of training (matplotlib on the Agg canvas, no pyplot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter, MaxNLocator

from distlab.plots import check_plot, class_colors, new_figure, save_figure

# Training progress is counted in optimizer steps or in federated rounds; the two are not on
# one scale, so each gets its own panels.
UNITS = ("step", "round")


def run_unit(run: dict[str, Any]) -> str | None:
    """'round' for a federated run, 'step' for one that counts optimizer steps, None for a
    run that stopped before either."""
    kinds = {e.get("kind") for e in run["events"]}
    return next((u for u in reversed(UNITS) if u in kinds), None)


def run_label(run: dict[str, Any]) -> str:
    """A legend entry: the run's name, strategy, workers and, unless completed, status."""
    s = run["summary"]
    parts = [str(s.get("strategy") or "?"), f"{s.get('workers') or '?'}w"]
    if s.get("status") != "completed":
        parts.append(str(s.get("status") or "status unknown"))
    return f"{run['name']} ({', '.join(parts)})"


def panel_layout(runs: list[dict[str, Any]]) -> list[list[str]]:
    """Rows of panel names: loss and accuracy for each unit some run counts in, next to one
    accuracy-over-seconds panel that spans the rows (seconds mean the same for every run)."""
    units = [u for u in UNITS if any(run_unit(r) == u for r in runs)]
    return [[f"loss-{u}", f"acc-{u}", "time"] for u in units] or [["time"]]


def plot_curves(runs: list[dict[str, Any]], path: str | Path) -> Path:
    """Training loss and test accuracy per step, the same per round on their own panels (each
    drawn only when some run counts in that unit), and test accuracy over seconds of training
    for all runs. Runs that did not complete are dashed."""
    path = check_plot(path)
    mosaic = panel_layout(runs)
    fig = new_figure(15 if len(mosaic[0]) > 1 else 7, 1.2 + 3.6 * len(mosaic))
    axes = fig.subplot_mosaic(mosaic)
    handles = []
    for run, color in zip(runs, class_colors(len(runs)), strict=True):
        style = {"color": color, "ls": "-" if run["summary"].get("status") == "completed" else "--"}
        draw_run(run, axes, style)
        handles.append(Line2D([], [], marker="o", ms=3, label=run_label(run), **style))
    for loss_name, acc_name, _ in (row for row in mosaic if len(row) == 3):
        label_unit_axes(axes[loss_name], axes[acc_name], loss_name.removeprefix("loss-"))
    axes["time"].set(
        xlabel="seconds of training", ylabel="test accuracy", title="Test accuracy over wall time"
    )
    for ax in axes.values():
        finish_axes(ax)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)), fontsize=8)
    save_figure(fig, path)
    return path


class PlainLogFormatter(LogFormatter):
    """Log-axis labels as plain numbers ("2.305", not "2.3 x 10^0"); matplotlib still
    chooses which minor ticks get a label."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return f"{x:.4g}"


def label_unit_axes(loss_ax: Axes, acc_ax: Axes, unit: str) -> None:
    """Titles, labels and ticks of one unit's loss and accuracy panels."""
    name = "round (federated)" if unit == "round" else "step"
    loss_ax.set(
        xlabel=name, ylabel="training loss", yscale="log", title=f"Training loss per {unit}"
    )
    loss_ax.yaxis.set_major_formatter(PlainLogFormatter())
    loss_ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))
    acc_ax.set(xlabel=name, ylabel="test accuracy", title=f"Test accuracy per {unit}")
    for ax in (loss_ax, acc_ax):
        # Steps and rounds are counts: no tick at round 2.5.
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


def draw_run(run: dict[str, Any], axes: dict[str, Axes], style: dict[str, Any]) -> None:
    """One run's lines: loss and accuracy on its unit's panels, accuracy over seconds."""
    events, unit = run["events"], run_unit(run)
    evals = [e for e in events if e.get("kind") == "eval" and e.get("accuracy") is not None]
    if unit is not None:
        units = [e for e in events if e.get("kind") == unit and e.get("loss") is not None]
        # Numbered by the event's own count; the position stands in where it is missing.
        x = [e.get(unit) or i for i, e in enumerate(units, 1)]
        if units:
            axes[f"loss-{unit}"].plot(x, smooth([e["loss"] for e in units]), lw=1.2, **style)
        counted = [e for e in evals if e.get(unit) is not None]
        if counted:
            axes[f"acc-{unit}"].plot(
                [e[unit] for e in counted], [e["accuracy"] for e in counted], marker="o", ms=3,
                **style,
            )  # fmt: skip
    start = next((e.get("seconds") for e in events if e.get("phase") == "train"), None) or 0.0
    timed = [e for e in evals if e.get("seconds") is not None]
    if timed:
        axes["time"].plot(
            [e["seconds"] - start for e in timed], [e["accuracy"] for e in timed], marker="o",
            ms=3, **style,
        )  # fmt: skip


def finish_axes(ax: Axes) -> None:
    """Grid, and a note on a panel no run drew on, so an empty panel is not read as a bug."""
    ax.grid(alpha=0.3)
    if ax.get_ylabel() == "test accuracy":
        # Autoscaling around runs that all reach 1.0 would show accuracies above 1.
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, 0.0), min(high, 1.01))
    if not ax.lines:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def smooth(values: list[float], window: int = 10) -> np.ndarray:
    """Running mean over `window` points, so per-step noise does not hide the trend."""
    arr = np.asarray(values, dtype=float)
    if len(arr) < window:
        return arr
    kernel = np.ones(window) / window
    head = np.cumsum(arr[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(arr, kernel, mode="valid")])
