"""Plots and tables drawn from partitions and run directories (matplotlib, Agg, no pyplot)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from distlab.data.partition import Partition, partition_metrics

PLOT_SUFFIXES = (".png", ".svg")
PLOT_KINDS = ("bar", "heatmap")
# Beyond this many ticks on an axis, labels overlap; every n-th one is kept instead.
MAX_TICKS = 25


def check_plot(path: str | Path, kind: str = "bar") -> Path:
    """The plot path, whose extension picks the format; ValueError for another extension
    or an unknown kind, so callers can check before doing the work."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        allowed = ", ".join(PLOT_SUFFIXES)
        raise ValueError(f"plot file must end in {allowed} (got {path.name!r})")
    if kind not in PLOT_KINDS:
        raise ValueError(f"plot kind must be one of {', '.join(PLOT_KINDS)} (got {kind!r})")
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
    counts: np.ndarray, path: str | Path, kind: str = "bar", title: str | None = None
) -> Path:
    """Draw a parts x classes count matrix: `bar` stacks each client's class counts, `heatmap`
    shades clients x classes. PNG or SVG by the extension of `path`."""
    path = check_plot(path, kind)
    counts = np.asarray(counts)
    clients, classes = counts.shape
    fig = new_figure(min(14.0, max(6.0, 3.0 + 0.1 * clients)), 4.5)
    ax = fig.add_subplot()
    (draw_bars if kind == "bar" else draw_heatmap)(fig, ax, counts)
    ax.set_title(title or f"{clients} clients, {classes} classes")
    ax.set_xlabel("client")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


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


def top_classes(row: np.ndarray, top: int = 3) -> str:
    """The largest classes of one client as 'class:count', largest first: '3:120 7:40'."""
    order = np.argsort(-row, kind="stable")[:top]
    return " ".join(f"{c}:{row[c]}" for c in order if row[c] > 0)


def partition_table_rows(p: Partition, top: int = 3) -> list[dict[str, Any]]:
    """Per client: size, number of classes it holds and its `top` largest classes."""
    counts = np.asarray(p.counts)
    return [
        {
            "client": i,
            "size": int(row.sum()),
            "classes": int((row > 0).sum()),
            "top": top_classes(row, top),
        }
        for i, row in enumerate(counts)
    ]


def partition_record(p: Partition) -> dict[str, Any]:
    """JSON-ready description: scheme and its parameters, sizes, counts and metrics."""
    params = p.config.model_dump(exclude={"scheme"}) if p.config is not None else {}
    return {
        "scheme": p.scheme,
        "params": params,
        "clients": len(p.indices),
        "sizes": [int(s) for s in p.sizes],
        "counts": np.asarray(p.counts).astype(int).tolist(),
        "metrics": partition_metrics(p),
    }


def write_partition_record(run_dir: str | Path, partition: Partition) -> Path:
    """Write run_dir/partition.json and run_dir/partition.png (stacked bars); returns the
    JSON path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = partition_record(partition)
    path = run_dir / "partition.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    title = f"{partition.scheme} partition, TV distance {record['metrics']['tv_distance']:.3f}"
    plot_partition(partition.counts, run_dir / "partition.png", "bar", title)
    return path


# --- comparing runs ---------------------------------------------------------------------------


def load_runs(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """Summary and lead-rank events of each run directory; ValueError for a bad one."""
    from distlab.api import load_run

    runs = []
    for run_dir in map(Path, run_dirs):
        result = load_run(run_dir)
        lead = [e for e in result.events if e["rank"] == 0]
        runs.append({"name": run_dir.name, "summary": result.summary, "events": lead})
    return runs


def comparison_rows(runs: list[dict[str, Any]], target: float | None = None) -> list[dict]:
    """One row per run. Speedup is T(1)/T(N) against the one-process run of the set (the
    baseline does the same total work), efficiency is speedup / workers."""
    base = baseline_seconds(runs)
    rows = []
    for run in runs:
        s = run["summary"]
        seconds = s.get("train_seconds")
        speedup = round(base / seconds, 3) if base and seconds else None
        rows.append(
            {
                "run": run["name"],
                "strategy": s["strategy"],
                "workers": s["workers"],
                "final_accuracy": s.get("final_accuracy"),
                "best_accuracy": s.get("best_accuracy"),
                "train_seconds": seconds,
                "samples_per_second": s.get("samples_per_second"),
                "speedup": speedup,
                "efficiency": round(speedup / s["workers"], 3) if speedup else None,
                "bytes_per_step_measured": s.get("bytes_per_step_measured"),
                "bytes_per_step_analytic": s.get("bytes_per_step_analytic"),
                "seconds_to_target": time_to_accuracy(run["events"], target) if target else None,
            }
        )
    return rows


def baseline_seconds(runs: list[dict[str, Any]]) -> float | None:
    singles = [
        r["summary"]["train_seconds"]
        for r in runs
        if r["summary"].get("processes") == 1 and r["summary"].get("train_seconds")
    ]
    return min(singles) if singles else None


def time_to_accuracy(events: list[dict[str, Any]], target: float) -> float | None:
    """Seconds from the start of training to the first eval at or above `target`."""
    start = next((e["seconds"] for e in events if e.get("phase") == "train"), 0.0)
    hit = next((e for e in events if e["kind"] == "eval" and e["accuracy"] >= target), None)
    return round(hit["seconds"] - start, 3) if hit else None


def markdown_table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join("-" if row[k] is None else str(row[k]) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(runs: list[dict[str, Any]], path: str | Path) -> Path:
    """Training loss per step (or round), and test accuracy against steps and against
    seconds, one line per run."""
    path = check_plot(path)
    fig = new_figure(15, 4.2)
    loss_ax, acc_ax, time_ax = fig.subplots(1, 3)
    for run in runs:
        draw_run(run, loss_ax, acc_ax, time_ax)
    loss_ax.set(xlabel="step / round", ylabel="training loss", yscale="log", title="Training loss")
    acc_ax.set(xlabel="step / round", ylabel="test accuracy", title="Test accuracy")
    time_ax.set(
        xlabel="seconds of training", ylabel="test accuracy", title="Test accuracy over wall time"
    )
    for ax in (loss_ax, acc_ax, time_ax):
        ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    return path


def draw_run(run: dict[str, Any], loss_ax: Axes, acc_ax: Axes, time_ax: Axes) -> None:
    units = [e for e in run["events"] if e["kind"] in ("step", "round") and e.get("loss")]
    label = f"{run['name']} ({run['summary']['strategy']}, {run['summary']['workers']}w)"
    if units:
        x = np.arange(1, len(units) + 1)
        loss_ax.plot(x, smooth([e["loss"] for e in units]), label=label, lw=1.2)
    evals = [e for e in run["events"] if e["kind"] == "eval"]
    start = next((e["seconds"] for e in run["events"] if e.get("phase") == "train"), 0.0)
    if evals:
        acc_ax.plot(
            [e.get("step", e.get("round", i)) for i, e in enumerate(evals)],
            [e["accuracy"] for e in evals],
            marker="o",
            ms=3,
            label=label,
        )
        time_ax.plot(
            [e["seconds"] - start for e in evals],
            [e["accuracy"] for e in evals],
            marker="o",
            ms=3,
            label=label,
        )


def smooth(values: list[float], window: int = 10) -> np.ndarray:
    """Running mean over `window` points, so per-step noise does not hide the trend."""
    arr = np.asarray(values, dtype=float)
    if len(arr) < window:
        return arr
    kernel = np.ones(window) / window
    head = np.cumsum(arr[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(arr, kernel, mode="valid")])


def plot_bytes(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Measured against analytic bytes per worker per step (or round), one pair per run."""
    path = check_plot(path)
    rows = [r for r in rows if r["bytes_per_step_measured"] is not None]
    fig = new_figure(max(5, 1.2 * len(rows) + 2), 4)
    ax = fig.subplots()
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["bytes_per_step_measured"] for r in rows], 0.4, label="measured")
    ax.bar(x + 0.2, [r["bytes_per_step_analytic"] or 0 for r in rows], 0.4, label="analytic")
    ax.set_xticks(x, [r["run"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="bytes per worker per step", title="Communication")
    ax.legend()
    fig.savefig(path, dpi=120)
    return path


def write_report(
    run_dirs: list[str | Path], out: str | Path, target: float | None = None
) -> list[dict[str, Any]]:
    """curves.png, bytes.png, summary.md and summary.json for a set of runs."""
    runs = load_runs(run_dirs)
    rows = comparison_rows(runs, target)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(runs, out / "curves.png")
    if any(r["bytes_per_step_measured"] is not None for r in rows):
        plot_bytes(rows, out / "bytes.png")
    (out / "summary.md").write_text(markdown_table(rows))
    (out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows
