"""What a search leaves beside its trials: results.csv and results.md (one row per trial:
its parameters, the metric, seconds, status), best.yaml (the best configuration, ready to
run) and metric.png (the metric over trials, best so far marked)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import yaml

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
    best.yaml, or None when no trial finished."""
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


def plot_metric(rows: list[dict[str, Any]], metric: str, mode: str, path: Path) -> Path:
    """The metric of each finished trial in trial order, and the best so far."""
    fig = new_figure(7, 4)
    ax = fig.subplots()
    points = [(i, r[metric]) for i, r in enumerate(rows) if r.get(metric) is not None]
    if points:
        x, y = zip(*points, strict=True)
        pick = max if mode == "max" else min
        best = [pick(y[: i + 1]) for i in range(len(y))]
        ax.plot(x, y, "o", label=metric)
        ax.step(x, best, where="post", label=f"best so far ({mode})")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no trial reported the metric", ha="center", transform=ax.transAxes)
    ax.set(xlabel="trial", ylabel=metric, title=f"{metric} over trials")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
