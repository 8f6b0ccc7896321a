"""What the `distlab` command draws: consoles, numbers, a run's summary, progress bars,
a sweep's cell lines and the tables of a report and a search."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def console(**options: Any) -> Console:
    """A rich Console that writes colour and cursor codes only to a terminal. mpirun (and
    srun --pty) hands each rank a pseudo-terminal of its own whatever the launcher's output
    is (a file, a pipe), so under them the output is plain unless FORCE_COLOR or
    TTY_COMPATIBLE=1 asks for codes; NO_COLOR drops colour everywhere (rich reads it)."""
    from distlab.runtime.environ import LAUNCHER_KEYS

    forwarded = any(keys[0] in os.environ for keys in LAUNCHER_KEYS if keys[0] != "RANK")
    asked = os.environ.get("FORCE_COLOR") or os.environ.get("TTY_COMPATIBLE") == "1"
    if forwarded and not asked:
        options.setdefault("force_terminal", False)
    return Console(**options)


err = console(stderr=True)
out = console()


def wide(width: int) -> Console:
    """A stdout console at least `width` columns wide, for tables too wide to fold."""
    return console(width=max(width, out.width))


def plain(value: Any) -> str:
    """A config value as a user types it: none, true, 0.1."""
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def format_number(value: Any) -> str:
    """Four significant decimals for fractions, no trailing zeros: 0.917, 2.3, 1,421,696."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or (value.is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    if value and abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:.4f}".rstrip("0").rstrip(".")


def number_or_dash(value: Any) -> str:
    return "-" if value is None else format_number(value)


def say(text: str) -> None:
    """A line of news on stdout, flushed at once (a deployed run's progress)."""
    print(text, flush=True)


def warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings from the run (more processes than cores) as one plain line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


# Counts that are 0 only because the strategy does not have them (a fedavg run has no steps).
HIDDEN_WHEN_ZERO = ("rounds", "steps")


def print_summary(summary: dict[str, Any], run_dir: Path | None = None) -> None:
    """A run's summary table (the rows its strategy shows), its cause and its directory."""
    from distlab.api import summary_rows

    table = Table(title="run summary", show_header=False)
    table.add_column("measure", style="bold")
    table.add_column("value", justify="right")
    for label, key in summary_rows(summary.get("strategy")):
        value = summary.get(key)
        if value is None or (value == 0 and key in HIDDEN_WHEN_ZERO):
            continue
        table.add_row(label, summary_value(value))
    threads = (summary.get("environment") or {}).get("threads_per_process")
    if threads is not None:
        table.add_row("threads/process", str(threads))
    out.print(table)
    if summary.get("error"):
        out.print(f"cause: {summary['error']}", soft_wrap=True)
    if run_dir is not None:
        out.print(f"run directory: {run_dir}", soft_wrap=True)


def summary_value(value: Any) -> str:
    """A summary figure as its table row shows it: a chain of compressors as 'topk > fp16'."""
    if isinstance(value, list):
        return " > ".join(map(str, value))
    return format_number(value)


def print_result(summary: dict[str, Any], run_dir: Path | None, as_json: bool) -> None:
    """A finished run: summary.json as JSON, or its summary table."""
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary, run_dir)


def print_repeats(console: Console, path: Path) -> None:
    """The report's repeats table, when some config ran more than once."""
    from rich.markup import escape

    from distlab.experiments.page import REPEAT_COLUMNS, REPEATS_TITLE, cell

    if not path.is_file():
        return
    table = Table(*REPEAT_COLUMNS, title=escape(REPEATS_TITLE))
    for group in json.loads(path.read_text()):
        table.add_row(*(escape(cell(group.get(k))) for k in REPEAT_COLUMNS))
    console.print(table)


def bars(*columns: Any) -> Progress:
    """Transient progress bars on stderr: a description, the bar, `columns`, elapsed time."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *columns,
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


def run_progress() -> Progress:
    """The bar of one run: steps or rounds done, the last loss or accuracy."""
    return bars(TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[info]}"))


def progress_hook(progress: Progress):
    """Drive the progress display from the run's events: a status line while processes
    start (status events), then a bar over steps or rounds."""
    task: dict[str, Any] = {}

    def on_event(event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind == "status" and "id" not in task:
            show_status(task, event["text"])
        elif kind == "phase" and "total" in event and "id" not in task:
            show_status(task, None)
            progress.start()
            task["id"] = progress.add_task(
                f"{event.get('unit', 'step')}s", total=event["total"], info=""
            )
        elif kind in ("step", "round") and "id" in task:
            loss = event.get("loss")
            progress.update(task["id"], advance=1, info="" if loss is None else f"loss {loss:.4f}")
        elif kind == "eval" and "id" in task:
            progress.update(task["id"], info=f"acc {event['accuracy']:.4f}")

    return on_event


def show_status(task: dict[str, Any], text: str | None) -> None:
    """One transient spinner line saying what the run is doing before training starts."""
    if "status" in task:
        task["status"].stop()
        del task["status"]
    if text is not None:
        task["status"] = err.status(text + " ...")
        task["status"].start()


def sweep_progress() -> Progress:
    """The bars of a sweep: its cells done, and one line per running cell."""
    return bars(TextColumn("{task.completed}/{task.total}"))


def cell_display(progress: Progress, plan):
    """A sweep's progress: one bar over its cells, a line per running cell, and a line
    printed as each cell ends."""
    overall = progress.add_task(f"sweep {plan.name}", total=len(plan.cells))
    lines: dict[str, Any] = {}

    def on_cell(kind: str, cell, result) -> None:
        if kind == "start":
            lines[cell.name] = progress.add_task(f"  {cell.name}", total=None)
            return
        if cell.name in lines:
            progress.remove_task(lines.pop(cell.name))
        progress.advance(overall)
        progress.console.print(cell_line(kind, cell, result), soft_wrap=True, highlight=False)

    return on_cell


def cell_line(kind: str, cell, result) -> str:
    """The line a sweep prints when a cell ends or is found finished."""
    if kind == "skip":
        return f"finished before: {cell.name}"
    if result.status != "completed":
        return f"{result.status}: {cell.name}: {result.error or 'no cause recorded'}"
    shown = number_or_dash(result.summary.get("final_accuracy"))
    return f"completed: {cell.name}  accuracy {shown}  {format_number(result.seconds)} s"


def print_cells(plan, results) -> None:
    """A sweep's table of cells, and where its directory is."""
    table = Table("cell", "status", "final acc", "train s", "note", title=f"sweep {plan.name}")
    for r in results:
        acc, train = r.summary.get("final_accuracy"), r.summary.get("train_seconds")
        note = "finished before" if r.skipped else (r.error or "")
        table.add_row(r.cell.name, r.status, number_or_dash(acc), number_or_dash(train), note)
    wide(160).print(table)
    out.print(f"sweep directory: {plan.root}  (distlab report {plan.root})", soft_wrap=True)


def print_plan(plan) -> None:
    """A dry run's table: each cell, its processes and its settings."""
    table = Table("cell", "processes", "settings", title=f"sweep {plan.name}: {plan.root}")
    for cell in plan.cells:
        settings = ", ".join(f"{k}={plain(v)}" for k, v in cell.values.items())
        table.add_row(cell.name, str(cell.processes), settings or "(base config)")
    out.print(table)


def trial_line(plan):
    """A search's line per trial as it ends: its metric and the evals it reported."""

    def on_trial(kind: str, trial: str, result: dict[str, Any]) -> None:
        value = result.get(plan.metric)
        shown = "" if value is None else f"  {plan.metric} {format_number(value)}"
        evals = result.get("training_iteration") or 0
        err.print(f"{kind}: {trial}{shown}  ({evals} evals)", soft_wrap=True, highlight=False)

    return on_trial


def print_best(done) -> None:
    """A search's trials, best first, their counts by status and how to rerun the best."""
    from distlab.experiments.tune.outcome import ranked

    plan = done.plan
    table = Table("trial", plan.metric, "evals", "seconds", *plan.space, title="best trials")
    for row in ranked(done):
        values = (row.value, row.iterations, row.seconds, *row.params.values())
        table.add_row(row.trial, *(number_or_dash(v) for v in values))
    wide(160).print(table)
    counts = {s: sum(r.status == s for r in done.rows) for s in ("completed", "stopped", "failed")}
    said = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    out.print(f"{len(done.rows)} trials ({said}); results in {plan.out}", soft_wrap=True)
    out.print(f"best: distlab run --config {plan.out / 'best.yaml'}", soft_wrap=True)


def print_tuned(done) -> None:
    """A scikit-learn search's best and default configurations, and its scaling table."""
    from distlab.experiments.tune.sklearn import METRIC

    scores = (METRIC, "cv_std", "test_accuracy")
    table = Table("configuration", "cv accuracy", "cv std", "test accuracy")
    if done.best is not None:
        shown = ", ".join(f"{k}={param_value(v)}" for k, v in done.best["params"].items())
        table.add_row(f"best: {shown}", *(format_number(done.best[k]) for k in scores))
    if done.default is not None:
        table.add_row("default", *(format_number(done.default[k]) for k in scores))
    failed = sum(r["status"] != "completed" for r in done.rows)
    out.print(table)
    if done.scaling:
        grid = Table("nodes", "wall s", "speedup", "efficiency", title="scaling")
        for r in done.scaling:
            grid.add_row(*(format_number(round(r[k], 3)) for k in SCALING_KEYS))
        out.print(grid)
    note = f" ({failed} trials failed)" if failed else ""
    out.print(f"{len(done.rows)} trials{note}; results in {done.out}", soft_wrap=True)


# The scaling table's columns: the keys of each row of a --scaling search.
SCALING_KEYS = ("nodes", "seconds", "speedup", "efficiency")


def param_value(value: Any) -> str:
    return format_number(value) if isinstance(value, float) else plain(value)
