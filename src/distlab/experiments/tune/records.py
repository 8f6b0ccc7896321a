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

from pathlib import Path
from typing import Any

from distlab.runs.child import read_summary
from distlab.runs.directory import RunPaths, write_json
from distlab.runs.events import read_events

# What a run writes of itself when it finishes on its own: never overruled by the trial.
OWN_ENDINGS = ("completed", "failed")
# The eval event's figure each trial reports, and the summary figure that is its record.
METRICS = {"accuracy": "final_accuracy", "loss": "final_loss"}


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
    if not RunPaths(run_dir).config.is_file():
        return {}
    summary = read_summary(run_dir)
    if not summary:
        from distlab.api import summary_from_events

        summary = summary_from_events(run_dir, word)
    if summary.get("status") not in OWN_ENDINGS:
        summary["status"] = word
        if error and not summary.get("error"):
            summary["error"] = error
    summary["tune"] = {"trial": trial, "evals_reported": reported}
    write_summary(run_dir, summary)
    return summary


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_json(RunPaths(Path(run_dir)).summary, summary)


def restatus(run_dir: Path, word: str) -> None:
    """Give a settled record another status word (an interrupted search's trials)."""
    summary = read_summary(run_dir)
    if summary and summary.get("status") not in OWN_ENDINGS and summary.get("status") != word:
        summary["status"] = word
        write_summary(run_dir, summary)


def count_evals(run_dir: Path, lead: int | None) -> int:
    """Eval events of the lead rank in the run's merged events."""
    try:
        events = read_events(RunPaths(Path(run_dir)).merged_events)
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
