"""Figures against the number of workers: speedup and efficiency, final accuracy, and the
bytes each run moved against its paradigm's formula (matplotlib on the Agg canvas).

Runs are grouped into series by the settings that differ between them other than the worker
count and the seed: a sweep over strategy x workers x seed gives one line per strategy, with
the median over seeds and repeats and error bars from the least to the most.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from distlab.plots import check_plot, class_colors, new_figure, save_figure

# Settings that never make a series of their own: the axis, the repeats, and where and how
# a run was written or watched.
NOT_SERIES = {
    "workers", "seed", "name", "out_dir", "threads", "timeout", "tensorboard", "data_dir",
    "save_model", "eval_every", "oversubscribe", "download",
}  # fmt: skip


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'strategy': {'name': 'fedavg'}} -> {'strategy.name': 'fedavg'}."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def series_labels(configs: list[dict[str, Any]]) -> list[str]:
    """A label per run from the settings that vary across the runs (workers and seeds
    aside): 'allreduce', 'fedavg, partition.scheme=dirichlet'."""
    flats = [flatten(c) for c in configs]
    keys = sorted({k for f in flats for k in f})
    varying = [
        k for k in keys if k.split(".")[0] not in NOT_SERIES | {"fault"} and varies(flats, k)
    ]
    labels = []
    for flat in flats:
        parts = [str(flat.get("strategy.name", "?"))]
        parts += [f"{k}={flat.get(k)}" for k in varying if k != "strategy.name" and k in flat]
        labels.append(", ".join(parts))
    return labels


def varies(flats: list[dict[str, Any]], key: str) -> bool:
    """Whether runs differ in `key`. A strategy's own key (strategy.mode) differs only
    between runs of that strategy: other strategies do not have it."""
    if key.startswith("strategy.") and key != "strategy.name":
        by_name: dict[Any, set[str]] = defaultdict(set)
        for flat in flats:
            if key in flat:
                by_name[flat.get("strategy.name")].add(repr(flat[key]))
        return any(len(values) > 1 for values in by_name.values())
    return len({repr(f.get(key)) for f in flats}) > 1


def aggregate(rows: list[dict[str, Any]], labels: list[str], key: str) -> dict[str, dict]:
    """{series: {workers: (median, min, max, n)}} of rows[key] over the runs (seeds and
    repeats) that have it: the median resists the one run a busy machine slowed down, and
    the min-max shows how far the runs spread."""
    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row, label in zip(rows, labels, strict=True):
        if row.get(key) is not None and row.get("workers") is not None:
            values[label][row["workers"]].append(float(row[key]))
    return {
        label: {
            w: (float(np.median(v)), float(np.min(v)), float(np.max(v)), len(v))
            for w, v in sorted(by_w.items())
        }
        for label, by_w in values.items()
    }


def flagged_points(rows: list[dict[str, Any]], labels: list[str]) -> set[tuple[str, int]]:
    """(series, workers) of the points with a flagged run: disturbed, or its baseline, or an
    efficiency above 1."""
    return {
        (label, row["workers"])
        for row, label in zip(rows, labels, strict=True)
        if row.get("flags") and row.get("speedup") is not None
    }


def plot_speedup(
    rows: list[dict], labels: list[str], path: str | Path, cores: int | None = None
) -> Path:
    """Speedup T(1)/T(N) and efficiency against workers, one line per series (the median
    over seeds and repeats, bars from min to max), the ideal line, the machine's core count
    when runs go past it, and a red ring on every point with a flagged run (see the report's
    flags). A run without a fair one-process baseline is left out (its speedup_note says
    why)."""
    path = check_plot(path)
    fig = new_figure(12, 5.0)
    speed_ax, eff_ax = fig.subplots(1, 2)
    speed = aggregate(rows, labels, "speedup")
    eff = aggregate(rows, labels, "efficiency")
    flagged = flagged_points(rows, labels)
    workers = sorted({r["workers"] for r in rows if r.get("workers")})
    top = max(workers, default=1)
    speed_ax.plot([1, top], [1, top], color="0.6", ls=":", label="ideal")
    eff_ax.axhline(1.0, color="0.6", ls=":", label="ideal")
    if cores and cores < top:
        # Past the cores, processes share them: the speedup there measures time-slicing.
        for ax in (speed_ax, eff_ax):
            ax.axvline(cores, color="tab:red", ls="--", lw=0.8, label=f"{cores} cores")
    for (label, points), color in zip(speed.items(), class_colors(len(speed)), strict=True):
        draw_series(speed_ax, points, label, color, flagged)
        draw_series(eff_ax, eff.get(label, {}), label, color, flagged)
    speed_ax.set(xlabel="workers", ylabel="speedup T(1) / T(N)", title="Speedup of training time")
    eff_ax.set(xlabel="workers", ylabel="efficiency (speedup / workers)", title="Efficiency")
    for ax in (speed_ax, eff_ax):
        ax.set_xticks(workers)
        ax.grid(alpha=0.3)
        if not speed:
            ax.text(0.5, 0.5, "no run has a one-process baseline", ha="center",
                    transform=ax.transAxes)  # fmt: skip
    speed_ax.legend(fontsize=8)
    note = "points: median over seeds and repeats; bars: min to max"
    if flagged:
        note += "; red ring: a run flagged as disturbed or above ideal (see the report's flags)"
    fig.supxlabel(note, fontsize=8, color="0.3")  # constrained layout keeps it clear of axes
    return save_figure(fig, path)


def plot_accuracy(rows: list[dict], labels: list[str], path: str | Path) -> Path:
    """Final test accuracy against workers, one line per series (median over seeds and
    repeats, bars from min to max)."""
    path = check_plot(path)
    fig = new_figure(7, 4.6)
    ax = fig.subplots()
    acc = aggregate(rows, labels, "final_accuracy")
    for (label, points), color in zip(acc.items(), class_colors(len(acc)), strict=True):
        draw_series(ax, points, label, color)
    ax.set(xlabel="workers", ylabel="final test accuracy", title="Accuracy against workers")
    ax.set_xticks(sorted({r["workers"] for r in rows if r.get("workers")}))
    ax.grid(alpha=0.3)
    if acc:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def draw_series(
    ax,
    points: dict[int, tuple[float, float, float, int]],
    label: str,
    color,
    flagged: set[tuple[str, int]] | None = None,
) -> None:
    if not points:
        return
    x = list(points)
    median = np.array([points[w][0] for w in x])
    low = median - np.array([points[w][1] for w in x])
    high = np.array([points[w][2] for w in x]) - median
    ax.errorbar(x, median, yerr=[low, high], marker="o", ms=4, capsize=3, color=color,
                label=label)  # fmt: skip
    marked = [(w, m) for w, m in zip(x, median, strict=True) if (label, w) in (flagged or ())]
    if marked:
        ax.scatter(*zip(*marked, strict=True), s=140, facecolors="none", edgecolors="tab:red",
                   linewidths=1.5, zorder=5)  # fmt: skip


# (measured, analytic) summary fields per unit of communication, in the order they are looked
# for: what one worker moves per step, per federated round, per averaging.
BYTE_PAIRS = (
    ("step", "bytes_per_step_measured", "bytes_per_step_analytic"),
    ("round", "bytes_per_round_measured", "bytes_per_round_logical"),
    ("averaging", "bytes_per_averaging_measured", "bytes_per_averaging_analytic"),
)
# What one bar of each unit counts, unless the run's summary says (`bytes_per_round_scope`):
# data-parallel figures are one worker's; a federated round's are the server's, all clients.
BYTE_SCOPES = {
    "step": "per worker per step",
    "round": "per round",
    "averaging": "per worker per averaging",
}


def byte_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """The run's communication figures: per worker per unit measured and analytic (None when
    unknown), and the total payload of every rank."""
    unit, measured, analytic, scope = None, None, None, None
    for name, m_key, a_key in BYTE_PAIRS:
        if summary.get(m_key) is not None:
            # a round's formula is FedAvg's logical figure, or another strategy's analytic one
            fallback = summary.get(f"bytes_per_{name}_analytic")
            unit, measured = name, summary[m_key]
            analytic = summary.get(a_key) if summary.get(a_key) is not None else fallback
            scope = summary.get(f"bytes_per_{name}_scope") or BYTE_SCOPES[name]
            break
    ranks = summary.get("bytes_per_rank") or {}
    total = sum(r.get("bytes_sent", 0) + r.get("bytes_recv", 0) for r in ranks.values())
    if summary.get("processes") == 1:
        total = 0  # a rank alone hands its collectives to itself: nothing crosses a wire
    return {
        "unit": unit,
        "scope": scope,
        "measured": measured,
        "analytic": analytic,
        "total_bytes": total if ranks else None,
    }


def plot_communication(names: list[str], summaries: list[dict], path: str | Path) -> Path:
    """Measured against analytic bytes per unit of communication (one pair of bars per run,
    labelled with what it counts: one worker per step, or all clients per federated round;
    an unknown formula is left out, never drawn as 0), and every run's total payload in
    MB."""
    path = check_plot(path)
    figures = [byte_figures(s) for s in summaries]
    keep = [i for i, f in enumerate(figures) if f["measured"] is not None]
    fig = new_figure(max(9, 0.9 * len(names) + 5), 4.8)
    per_ax, total_ax = fig.subplots(1, 2)
    x = np.arange(len(keep))
    per_ax.bar(x - 0.2, [figures[i]["measured"] for i in keep], 0.4, label="measured")
    known = [(j, figures[i]["analytic"]) for j, i in enumerate(keep)]
    known = [(j, v) for j, v in known if v is not None]
    if known:
        per_ax.bar([j + 0.2 for j, _ in known], [v for _, v in known], 0.4, label="analytic")
    per_ax.set_xticks(x, [f"{names[i]}\n({figures[i]['scope']})" for i in keep],
                      rotation=30, ha="right", fontsize=7)  # fmt: skip
    per_ax.set(ylabel="bytes (each bar's scope under it)", title="Measured vs formula")
    if keep:
        per_ax.legend(fontsize=8)
    totals = [(n, f["total_bytes"]) for n, f in zip(names, figures, strict=True)]
    totals = [(n, t) for n, t in totals if t is not None]
    total_ax.bar(range(len(totals)), [t / 1e6 for _, t in totals], 0.6, color="tab:green")
    total_ax.set_xticks(range(len(totals)), [n for n, _ in totals], rotation=30, ha="right",
                        fontsize=7)  # fmt: skip
    total_ax.set(ylabel="MB sent + received, all ranks", title="Total payload of each run")
    for ax in (per_ax, total_ax):
        ax.grid(alpha=0.3, axis="y")
        if not ax.patches:
            ax.text(0.5, 0.5, "no run exchanged bytes", ha="center", transform=ax.transAxes)
    return save_figure(fig, path)
