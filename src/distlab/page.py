"""The report as files a student pastes: report.md (figures beside it), report.html (one
self-contained page, images inlined) and results.csv (one row per run, every summary field).
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path
from typing import Any

from distlab.scaling import flatten

# Figures in the order the page shows them, with their captions.
FIGURES = {
    "speedup.png": "Speedup T(1)/T(N) and efficiency against workers (error bars: seeds).",
    "accuracy.png": "Final test accuracy against workers (error bars: seeds).",
    "curves.png": "Training loss and test accuracy per step, per round, and over wall time.",
    "communication.png": "Bytes per worker, measured against the formula, and each run's total.",
    "whatif.png": "Alpha-beta model of these runs on other networks: a model, not a measurement.",
}
TABLE_COLUMNS = (
    "run", "status", "strategy", "workers", "seed", "final_accuracy", "train_seconds",
    "samples_per_second", "speedup", "efficiency", "bytes_per_step_measured",
    "bytes_per_step_analytic", "seconds_to_target",
)  # fmt: skip


def cell(value: Any) -> str:
    """A figure as the summary holds it (already rounded there), so the page and
    summary.json agree digit for digit; unknown is '-'."""
    return "-" if value is None else str(value)


def table_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    columns = [c for c in TABLE_COLUMNS if any(r.get(c) is not None for r in rows)]
    return columns, [[cell(r.get(c)) for c in columns] for r in rows]


def figure_list(out: Path) -> list[tuple[str, str]]:
    """(file, caption) of each figure present, partition figures last."""
    found = [(name, caption) for name, caption in FIGURES.items() if (out / name).is_file()]
    for path in sorted(out.glob("partition-*.png")):
        found.append((path.name, f"Class counts per worker or client: {path.stem[10:]}."))
    return found


def write_markdown(out: Path, rows: list[dict], runs: list[dict], notes: list[str]) -> Path:
    columns, body = table_rows(rows)
    lines = [f"# distlab report: {len(rows)} runs", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    lines += [""] + [f"- {n}" for n in notes] + [""]
    for name, caption in figure_list(out):
        lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    lines += ["## Configs", ""]
    for run in runs:
        config = json.dumps(run["config"], indent=2)
        lines += [f"### {run['name']}", "", "```json", config, "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } td:first-child { text-align: left; }
figure { margin: 1.5em 0; } img { max-width: 100%; } pre { background: #f7f7f7; padding: 8px; }
"""


def write_html(out: Path, rows: list[dict], runs: list[dict], notes: list[str]) -> Path:
    """One page with everything inlined, so it can be mailed or opened from anywhere."""
    columns, body = table_rows(rows)
    esc = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>distlab report: {len(rows)} runs</title><style>{STYLE}</style></head><body>",
        f"<h1>distlab report: {len(rows)} runs</h1>",
        '<table id="runs"><thead><tr>'
        + "".join(f"<th>{esc(c)}</th>" for c in columns)
        + "</tr></thead><tbody>",
    ]
    for r in body:
        parts.append("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>")
    parts.append("</tbody></table>")
    if notes:
        parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    for name, caption in figure_list(out):
        data = base64.b64encode((out / name).read_bytes()).decode()
        parts.append(
            f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>"
        )
    parts.append("<h2>Configs</h2>")
    for run in runs:
        config = esc(json.dumps(run["config"], indent=2))
        parts.append(f"<details><summary>{esc(run['name'])}</summary><pre>{config}</pre></details>")
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path


def write_csv(out: Path, rows: list[dict], runs: list[dict]) -> Path:
    """One row per run: the comparison's figures, then every summary field (nested ones as
    dotted columns, lists as JSON), so pandas.read_csv gives the whole record."""
    records = []
    for row, run in zip(rows, runs, strict=True):
        flat = flatten(run["summary"])
        record = {**row, **{k: v for k, v in flat.items() if k not in row}}
        records.append({k: json.dumps(v) if isinstance(v, list) else v for k, v in record.items()})
    columns = list(dict.fromkeys(k for r in records for k in r))
    path = out / "results.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for r in records:
            writer.writerow({k: "" if r.get(k) is None else r[k] for k in columns})
    return path
