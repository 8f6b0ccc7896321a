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

from distlab.experiments.scaling import flatten

# Figures in the order the page shows them, with their captions.
FIGURES = {
    "speedup.png": "Speedup T(1)/T(N) and efficiency against workers (median over seeds and "
    "repeats, bars from min to max; a red ring marks a flagged run).",
    "accuracy.png": "Final test accuracy against workers (median over seeds and repeats, bars "
    "from min to max).",
    "curves.png": "Training loss and test accuracy per step, per round, and over wall time.",
    "communication.png": "Bytes per worker per step (per round, all clients, for FedAvg), "
    "measured against the formula, and each run's total.",
    "tradeoff.png": "Final accuracy against bytes measured (log), with the Pareto front, and "
    "test accuracy against simulated seconds.",
    "privacy.png": "Final accuracy against epsilon (log; runs without privacy at the right "
    "edge), a line per setting, each point labelled by its noise multiplier z.",
    "robustness.png": "Final accuracy and attack success against the fraction of attackers, "
    "a line per aggregator, a row per attack kind.",
    "whatif.png": "Alpha-beta model of these runs on other networks: a model, not a measurement.",
}
TABLE_COLUMNS = (
    "run", "status", "strategy", "workers", "seed", "threads", "final_accuracy",
    "train_seconds", "samples_per_second", "baseline", "speedup", "efficiency",
    "bytes_per_step_measured", "bytes_per_step_analytic", "seconds_to_target", "compressors",
    "compression_ratio", "bytes_measured", "sim_seconds", "sim_seconds_to_target", "epsilon",
    "attack", "attack_fraction", "aggregator", "attack_success", "flagged",
)  # fmt: skip
# The repeats table: one row per config that ran several times.
REPEAT_COLUMNS = (
    "run", "runs", "strategy", "workers", "threads", "train_seconds", "speedup", "efficiency",
    "final_accuracy", "disturbed_runs", "flagged_runs",
)  # fmt: skip


def cell(value: Any) -> str:
    """A figure as the summary holds it (already rounded there), so the page and
    summary.json agree digit for digit; a spread over repeats as 'median [min, max]';
    unknown is '-'."""
    if isinstance(value, dict) and "median" in value:
        return f"{value['median']} [{value['min']}, {value['max']}]"
    return "-" if value is None else str(value)


def table_rows(
    rows: list[dict[str, Any]], columns: tuple[str, ...] = TABLE_COLUMNS
) -> tuple[list[str], list[list[str]]]:
    """The columns some row knows (the baseline column always: it says which run each
    speedup is against), and each row's cells."""
    shown = [c for c in columns if c == "baseline" or any(r.get(c) is not None for r in rows)]
    return shown, [[cell(r.get(c)) for c in shown] for r in rows]


def markdown_table(columns: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    return lines + ["| " + " | ".join(r) + " |" for r in body]


def html_table(table_id: str, columns: list[str], body: list[list[str]]) -> str:
    """A table in a box that scrolls sideways, so a wide table never widens the page."""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    rows = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in body)
    return (
        f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


def figure_list(out: Path) -> list[tuple[str, str]]:
    """(file, caption) of each figure present, partition figures last."""
    found = [(name, caption) for name, caption in FIGURES.items() if (out / name).is_file()]
    for path in sorted(out.glob("partition-*.png")):
        found.append((path.name, f"Class counts per worker or client: {path.stem[10:]}."))
    return found


REPEATS_TITLE = "Over repeats: median [min, max]"


def write_markdown(
    out: Path, rows: list[dict], runs: list[dict], notes: list[str], groups: list[dict]
) -> Path:
    lines = [f"# distlab report: {len(rows)} runs", ""]
    lines += markdown_table(*table_rows(rows))
    if groups:
        lines += ["", f"## {REPEATS_TITLE}", ""]
        lines += markdown_table(*table_rows(groups, REPEAT_COLUMNS))
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
.scroll { max-width: 100%; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
td { white-space: nowrap; }
th { background: #f0f0f0; } td:first-child { text-align: left; }
figure { margin: 1.5em 0; } img { max-width: 100%; } pre { background: #f7f7f7; padding: 8px; }
"""


def write_html(
    out: Path, rows: list[dict], runs: list[dict], notes: list[str], groups: list[dict]
) -> Path:
    """One page with everything inlined, so it can be mailed or opened from anywhere."""
    esc = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>distlab report: {len(rows)} runs</title><style>{STYLE}</style></head><body>",
        f"<h1>distlab report: {len(rows)} runs</h1>",
        html_table("runs", *table_rows(rows)),
    ]
    if groups:
        parts.append(f"<h2>{esc(REPEATS_TITLE)}</h2>")
        parts.append(html_table("repeats", *table_rows(groups, REPEAT_COLUMNS)))
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
