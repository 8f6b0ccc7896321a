"""A trial's record: its run directory (OUT/trials/<trial>/), the one source of a trial's
status, evals and metric for every file a search writes.

The run writes summary.json itself whenever it can: when it completes or fails, and when the
trial stops it (SIGTERM, recorded as `terminated`). Why a run was stopped only Tune knows, so
the trial settles the record: `stopped` when Tune's scheduler ended the trial before its run
finished, `interrupted` when the search itself was stopped (Ctrl-C), `failed` when the
trial's own code failed. A run that was killed before it could write (Ray kills a dead
worker's children) gets a summary built from its events here, with every figure the events
cannot give null. The settled record carries a `tune` block: the trial's id and how many
evals Tune was given (the scheduler may have decided on fewer than the run recorded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# What a run writes of itself when it finishes on its own: never overruled by the trial.
OWN_ENDINGS = ("completed", "failed")
# The eval event's figure each trial reports, and the summary figure that is its record.
METRICS = {"accuracy": "final_accuracy", "loss": "final_loss"}


def read_summary(run_dir: Path) -> dict[str, Any]:
    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def is_settled(run_dir: Path) -> bool:
    """Whether the trial has settled its record (summary.json with its `tune` block)."""
    return "tune" in read_summary(run_dir)


def settle(
    run_dir: Path,
    trial: str,
    word: str,
    reported: int | None,
    error: str | None = None,
) -> dict[str, Any]:
    """Give the run directory its final summary.json: the run's own when it completed or
    failed by itself, else (the run was stopped, or killed before it wrote one) status
    `word`, with `error` as its cause where it has none. `reported`: the evals Tune was
    given (None when unknown). Returns the summary; nothing is written where there is no
    run directory (its run never started)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        return {}
    summary = read_summary(run_dir)
    if not summary:
        summary = summary_from_events(run_dir, word)
    if summary.get("status") not in OWN_ENDINGS:
        summary["status"] = word
        if error and not summary.get("error"):
            summary["error"] = error
    summary["tune"] = {"trial": trial, "evals_reported": reported}
    write_summary(run_dir, summary)
    return summary


def summary_from_events(run_dir: Path, status: str) -> dict[str, Any]:
    """summary.json as the run would have written it, from the events its ranks wrote before
    it was killed. Its wall seconds died with it: null, as is every figure the events do not
    give (train seconds without the end of training, comm totals without the ranks' last
    word)."""
    from distlab.config import validate_config
    from distlab.runs.directory import read_json
    from distlab.runs.events import merge_events
    from distlab.strategies import get_spec
    from distlab.summary import summarize

    cfg = validate_config(read_json(run_dir / "config.json"))
    spec = get_spec(cfg.strategy.name)
    files = sorted((run_dir / "events").glob("rank-*.jsonl"))
    events = merge_events(files, run_dir / "events.jsonl")
    summary = summarize(cfg, spec, events, spec.processes(cfg), 0.0, status, run_dir)
    summary["wall_seconds"] = None
    summary["summary_from"] = "events: the run was killed before it wrote its summary"
    return summary


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    from distlab.runs.directory import write_json

    write_json(run_dir / "summary.json", summary)


def restatus(run_dir: Path, word: str) -> None:
    """Give a settled record another status word (an interrupted search's trials)."""
    summary = read_summary(run_dir)
    if summary and summary.get("status") not in OWN_ENDINGS and summary.get("status") != word:
        summary["status"] = word
        write_summary(run_dir, summary)


def count_evals(run_dir: Path, lead: int | None) -> int:
    """Eval events of the lead rank in the run's merged events."""
    from distlab.runs.events import read_events

    try:
        events = read_events(Path(run_dir) / "events.jsonl")
    except (OSError, ValueError):
        return 0
    lead = lead or 0
    return sum(e.get("kind") == "eval" and e.get("rank") == lead for e in events)


def figures(run_dir: Path, metric: str) -> dict[str, Any]:
    """What every file of the search says of a trial, from its record: status (None when
    the run never started), evals the run recorded, the metric (its last eval's value),
    wall seconds, and the cause of a failure."""
    summary = read_summary(run_dir)
    return {
        "status": summary.get("status"),
        "evals": count_evals(run_dir, summary.get("lead_rank")) if summary else 0,
        "value": summary.get(METRICS[metric]),
        "seconds": summary.get("wall_seconds"),
        "error": summary.get("error"),
    }


def last_line(log: Path) -> str | None:
    """The cause a run printed last (its `error: ` line, else its last line)."""
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return None
    said = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return said[-1] if said else (lines[-1] if lines else None)
