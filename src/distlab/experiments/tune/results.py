"""What a search leaves beside its trials: results.csv and results.md (one row per trial:
its parameters, the metric, seconds, status), best.yaml (the best configuration, ready to
run) and metric.png (the metric over trials, and the best so far as best.yaml picks it)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import yaml
from matplotlib.ticker import MaxNLocator

from distlab.plots import new_figure, save_figure


def write_results(
    out: Path,
    rows: list[dict[str, Any]],
    metric: str,
    mode: str,
    best: dict[str, Any] | None,
) -> None:
    """`rows`: one dict per trial, in trial order, with `trial`, `status`, `seconds`, the
    metric and the trial's parameters (dotted names). `best`: the configuration to write as
    best.yaml (that of the row `best_index` picks), or None when no trial completed."""
    out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(shown(r.get(k)) for k in columns) + " |" for r in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    if best is not None:
        (out / "best.yaml").write_text(yaml.safe_dump(best, sort_keys=False))
    plot_metric(rows, metric, mode, out / "metric.png")


def shown(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def is_candidate(row: dict[str, Any], metric: str) -> bool:
    """Whether best.yaml may name the trial: it completed, with a finite metric. A stopped
    or interrupted trial's metric is that of an unfinished run, not a result."""
    return row.get("status") == "completed" and is_number(row.get(metric))


def best_index(rows: list[dict[str, Any]], metric: str, mode: str) -> int | None:
    """The row best.yaml is written from: the best metric (`mode` max or min) among the
    candidates, the earliest of a tie; None when there is none."""
    best = None
    for i, row in enumerate(rows):
        if not is_candidate(row, metric):
            continue
        if best is None or beats(row[metric], rows[best][metric], mode):
            best = i
    return best


def beats(value: float, other: float, mode: str) -> bool:
    return value > other if mode == "max" else value < other


def best_so_far(rows: list[dict[str, Any]], metric: str, mode: str) -> list[tuple[int, float]]:
    """(row, best candidate metric up to and including that row) for each row from the
    first candidate on: the line metric.png draws, which ends at best.yaml's trial's value."""
    line: list[tuple[int, float]] = []
    for i, row in enumerate(rows):
        best = line[-1][1] if line else None
        if is_candidate(row, metric) and (best is None or beats(row[metric], best, mode)):
            best = row[metric]
        if best is not None:
            line.append((i, best))
    return line


def plot_metric(rows: list[dict[str, Any]], metric: str, mode: str, path: Path) -> Path:
    """The metric of each trial in trial order (completed trials filled, the last eval of
    the others hollow), the best so far over the completed trials only, and the trial
    best.yaml names, with a note saying so."""
    fig = new_figure(7, 4.4)
    ax = fig.subplots()
    done = [(i, r[metric]) for i, r in enumerate(rows) if is_candidate(r, metric)]
    others = [(i, r[metric], r.get("status")) for i, r in enumerate(rows)
              if not is_candidate(r, metric) and is_number(r.get(metric))]  # fmt: skip
    if done:
        ax.plot(*zip(*done, strict=True), "o", color="tab:blue", label=f"completed: {metric}")
    if others:
        statuses = "/".join(dict.fromkeys(str(s) for *_, s in others))
        ax.plot([x for x, *_ in others], [y for _, y, _ in others], "o", mfc="none",
                color="0.55", label=f"{statuses}: {metric} at its last eval")  # fmt: skip
    line = best_so_far(rows, metric, mode)
    if line:
        x, y = zip(*line, strict=True)
        ax.step(x, y, where="post", color="tab:orange",
                label=f"best so far ({mode} over completed trials)")  # fmt: skip
        at = best_index(rows, metric, mode)
        ax.plot(at, rows[at][metric], "*", ms=14, color="tab:orange", mec="k",
                label=f"best.yaml: {rows[at].get('trial')}")  # fmt: skip
    if done or others:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no trial reported the metric", ha="center", transform=ax.transAxes)
    ax.set(xlabel="trial (results.csv order, from 0)", ylabel=metric, title=f"{metric} over trials")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    note = f"best so far: the {mode} {metric} of the completed trials up to each trial, as "
    note += "best.yaml picks it"
    if others:
        note += ";\na trial that did not complete never counts (its value is an unfinished run's)"
    fig.supxlabel(note, fontsize=8, color="0.3")
    return save_figure(fig, path)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
