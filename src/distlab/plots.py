"""Figures of partitions (matplotlib on the Agg canvas, no pyplot global state)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PLOT_SUFFIXES = (".png", ".svg")
PLOT_KINDS = ("bar", "heatmap")
# Beyond this many ticks on an axis, labels overlap; every n-th one is kept instead.
MAX_TICKS = 25


def check_plot(path: str | Path, kind: str = "bar") -> Path:
    """The plot path, whose extension picks the format; ValueError for another extension,
    an unknown kind, or a place that cannot take the file (a missing or unwritable
    directory, an existing directory of that name), so callers can check before the work."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        allowed = ", ".join(PLOT_SUFFIXES)
        raise ValueError(f"plot file must end in {allowed} (got {path.name!r})")
    if kind not in PLOT_KINDS:
        raise ValueError(f"plot kind must be one of {', '.join(PLOT_KINDS)} (got {kind!r})")
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(
            f"cannot write plot {str(path)!r}: directory {str(folder)!r} does not exist"
        )
    if path.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write plot {str(path)!r}: not a writable file path")
    return path


def save_figure(fig: Figure, path: Path) -> Path:
    """Save, with a failure the checks could not foresee (root on a read-only file system)
    as one line."""
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise ValueError(f"cannot write plot {str(path)!r}: {exc.strerror}") from None
    return path


def new_figure(width: float, height: float) -> Figure:
    """A figure bound to the Agg canvas, so nothing touches pyplot's global state."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def class_colors(classes: int) -> list:
    """One color per class: qualitative maps while they last, then an even ramp."""
    if classes <= 10:
        return [colormaps["tab10"](i) for i in range(classes)]
    if classes <= 20:
        return [colormaps["tab20"](i) for i in range(classes)]
    return [colormaps["turbo"](x) for x in np.linspace(0, 1, classes)]


def tick_positions(n: int) -> np.ndarray:
    return np.arange(0, n, max(1, math.ceil(n / MAX_TICKS)))


def plot_partition(
    counts: np.ndarray,
    path: str | Path,
    kind: str = "bar",
    title: str | None = None,
    holder: str = "client",
) -> Path:
    """Draw a parts x classes count matrix: `bar` stacks each part's class counts, `heatmap`
    shades parts x classes; `holder` names who holds a part (client, worker). PNG or SVG by
    the extension of `path`."""
    path = check_plot(path, kind)
    counts = np.asarray(counts)
    clients, classes = counts.shape
    fig = new_figure(min(14.0, max(6.0, 3.0 + 0.1 * clients)), 4.5)
    ax = fig.add_subplot()
    (draw_bars if kind == "bar" else draw_heatmap)(fig, ax, counts)
    ax.set_title(title or f"{clients} {holder}s, {classes} classes")
    ax.set_xlabel(holder)
    return save_figure(fig, path)


def draw_bars(fig: Figure, ax: Axes, counts: np.ndarray) -> None:
    """Stacked bars, one color per class, legend outside the axes."""
    clients, classes = counts.shape
    x = np.arange(clients)
    # Many clients: touching bars without edges stay legible where gaps would not.
    width, edge = (0.8, 0.3) if clients <= 40 else (1.0, 0.0)
    bottom = np.zeros(clients)
    for cls, color in enumerate(class_colors(classes)):
        if not edge:
            # Touching bars without edges are one filled outline per class; a patch per bar
            # took half a second to draw for 100 clients.
            top = bottom + counts[:, cls]
            edges = np.arange(clients + 1) - width / 2
            ax.stairs(top, edges, baseline=bottom, fill=True, color=color, label=str(cls))
            bottom = top
            continue
        ax.bar(
            x,
            counts[:, cls],
            width,
            bottom=bottom,
            color=color,
            linewidth=edge,
            edgecolor="white",
            label=str(cls),
        )
        bottom += counts[:, cls]
    ax.set_xticks(tick_positions(clients))
    ax.set_xlim(-0.6, clients - 0.4)
    ax.set_ylim(0, max(1.0, bottom.max() * 1.04))
    ax.set_ylabel("samples")
    ax.legend(
        title="class",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize="small",
        ncols=math.ceil(classes / 20),
        frameon=False,
    )


def draw_heatmap(fig: Figure, ax: Axes, counts: np.ndarray) -> None:
    """Clients across, classes down, shade = samples; numbers written when they fit."""
    clients, classes = counts.shape
    image = ax.imshow(counts.T, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="samples")
    ax.set_xticks(tick_positions(clients))
    ax.set_yticks(tick_positions(classes))
    ax.set_ylabel("class")
    if clients <= 20 and classes <= 20:
        bright = counts.max() / 2
        for (i, j), value in np.ndenumerate(counts):
            color = "black" if value > bright else "white"
            ax.text(i, j, str(value), ha="center", va="center", fontsize=7, color=color)
