"""A search's outcome: one row per trial, said from the trial's record (its run directory)
alone, the best trial, and the files they make (results.csv, results.md, best.yaml,
metric.png: results.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from distlab.experiments.tune.plan import RESERVED_KEYS, TunePlan, plain_params, trial_data
from distlab.experiments.tune.records import figures
from distlab.experiments.tune.trial import NO_CAUSE, read_node
from distlab.runs.child import last_line

# Statuses of a trial that ended; pending (never started) and interrupted trials run again on
# --resume.
FINISHED = ("completed", "stopped", "failed")


@dataclass
class TrialRow:
    """One trial, as its record (its run directory) says: `status` is completed, stopped
    (by the scheduler), interrupted (running when the search stopped), failed, or pending
    (never started); `evals` the eval events the run recorded; `value` the metric of the
    last one (the run's final figure)."""

    trial: str
    status: str
    evals: int
    value: float | None
    seconds: float | None
    params: dict[str, Any]
    config: dict[str, Any] | None
    error: str | None = None
    node: dict[str, str] | None = None  # the Ray node its run ran on: {node, host}

    @property
    def iterations(self) -> int:
        """The evals, by the name the command reads."""
        return self.evals


@dataclass
class TuneOutcome:
    plan: TunePlan
    rows: list[TrialRow]
    best: TrialRow | None


def trial_row(plan: TunePlan, trial) -> TrialRow:
    """The trial's row, from its record alone; Tune gives only its id and parameters (and
    says failed where a trial failed before its run made a directory)."""
    params = plain_params(trial.config)
    record = figures(plan.run_dir(trial.trial_id), plan.metric)
    status = record["status"] or ("failed" if trial.status == "ERROR" else "pending")
    error = None
    if status == "failed":
        error = record["error"] or last_line(plan.log(trial.trial_id)) or NO_CAUSE
    return TrialRow(
        trial.trial_id, status, record["evals"], record["value"], record["seconds"], params,
        best_config(plan, params), error, read_node(plan.out, trial.trial_id),
    )  # fmt: skip


def best_config(plan: TunePlan, params: dict[str, Any]) -> dict[str, Any]:
    """The trial's config, ready for `distlab run --config` (name and out_dir left to it)."""
    data = trial_data(plan.base, params)
    return {k: v for k, v in data.items() if k not in RESERVED_KEYS}


def best_row(plan: TunePlan, rows: list[TrialRow]) -> TrialRow | None:
    """The trial best.yaml names, picked as metric.png marks it (results.best_index)."""
    from distlab.experiments.tune.results import best_index

    at = best_index(table_rows(plan, rows), plan.metric, plan.mode)
    return None if at is None else rows[at]


def is_value(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def ranked(outcome: TuneOutcome, count: int = 5) -> list[TrialRow]:
    """The best `count` trials that completed, best first."""
    done = [r for r in outcome.rows if r.status == "completed" and is_value(r.value)]
    return sorted(done, key=lambda r: r.value, reverse=outcome.plan.mode == "max")[:count]


def table_rows(plan: TunePlan, rows: list[TrialRow]) -> list[dict[str, Any]]:
    """The rows of results.csv and results.md."""
    table = []
    for r in rows:
        row = {"trial": r.trial, "status": r.status, "evals": r.evals}
        row |= {plan.metric: r.value, "seconds": r.seconds, **r.params}
        row |= {"node": (r.node or {}).get("node"), "host": (r.node or {}).get("host")}
        table.append(row | ({"error": r.error} if r.error else {}))
    return table


def write_outcome(outcome: TuneOutcome) -> None:
    from distlab.experiments.tune.results import write_results

    plan = outcome.plan
    best = outcome.best.config if outcome.best else None
    write_results(plan.out, table_rows(plan, outcome.rows), plan.metric, plan.mode, best)
