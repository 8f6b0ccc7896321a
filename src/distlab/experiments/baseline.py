"""Fair baselines and trust in a timing: which one-process runs a run's speedup is measured
against, and the flags that say when a run's time or speedup measures the machine rather than
the paradigm (slow outlier steps, other programs' load, stolen CPU, faster than ideal)."""

from __future__ import annotations

from typing import Any

import numpy as np

# A one-process run is a fair baseline only when it did the same work: same data, same model,
# as many samples, and the same meaning of --batch-size (global batch vs per worker/client).
BASELINE_KEYS = ("dataset", "model", "samples", "batch_size_meaning")
NO_BASELINE = (
    "no completed one-process run with the same dataset, model, samples (within 1%) and "
    "batch meaning"
)
# Workers that split a data set unevenly round their shares up: 3 workers walk 12,006 of
# 12,000 samples. Within this fraction it is the same work.
SAMPLES_TOLERANCE = 0.01

# A run is disturbed when its slow steps are this many times its median step: something
# else had the CPU, and its time measures the machine, not the paradigm.
SLOW_STEP_RATIO = 3.0
# CPU time a hypervisor may steal before a timing is no longer the run's own.
STEAL_LIMIT = 0.05
# Efficiency above this is faster than ideal: a baseline handicapped (other threads, load)
# or caches that only many workers' smaller shares fit; worth a look before it is believed.
EFFICIENCY_LIMIT = 1.05
# Cores other programs may keep busy before a run that wants the rest is disturbed: the
# system's own daemons and the command's parent process stay well below it.
OTHERS_FLOOR = 0.2


def efficiency(speedup: float | None, workers: int | None) -> float | None:
    """Speedup per worker, or None where either is unknown."""
    return round(speedup / workers, 3) if speedup is not None and workers else None


def median_seconds(group: list[dict[str, Any]]) -> float:
    """T(1): the median train seconds of a baseline's repeats."""
    return round(float(np.median([r["summary"]["train_seconds"] for r in group])), 4)


def baseline_label(group: list[dict[str, Any]] | None) -> str | None:
    """The baseline's run name, or the first of its repeats and how many there are."""
    if not group:
        return None
    name = group[0]["name"]
    return name if len(group) == 1 else f"{name} (median of {len(group)})"


def threads_of(summary: dict[str, Any]) -> Any:
    """Torch threads per process the run used (a list where its ranks differed), or None."""
    return (summary.get("environment") or {}).get("threads_per_process")


def own_demand(summary: dict[str, Any], cores: int) -> int:
    """The cores the run's processes could keep busy: processes x threads, at most all."""
    threads = threads_of(summary)
    threads = max(threads) if isinstance(threads, list) else (threads or 1)
    return min(cores, (summary.get("processes") or 1) * threads)


def disturbance(summary: dict[str, Any]) -> list[str]:
    """Why a run's timing is not its own: slow outlier steps, other programs that kept more
    of the machine busy than the run left free, CPU time stolen; empty when none is known."""
    reasons = []
    spread = summary.get("time_per_unit") or {}
    median, p90 = spread.get("median"), spread.get("p90")
    if median and p90 and p90 > SLOW_STEP_RATIO * median:
        reasons.append(
            f"{spread.get('unit', 'step')} time p90 {p90:.3g} s is {p90 / median:.1f}x "
            f"the median {median:.3g} s"
        )
    env = summary.get("environment") or {}
    cores, others = env.get("cores"), env.get("other_cores")
    if cores and others is not None and others > OTHERS_FLOOR:
        if others + own_demand(summary, cores) > cores:
            reasons.append(
                f"other programs kept {others:.2g} of the {cores} cores busy while it ran"
            )
    steal = env.get("steal_fraction")
    if steal is not None and steal > STEAL_LIMIT:
        reasons.append(f"{steal:.0%} of CPU time stolen")
    return reasons


def row_flags(
    run: dict[str, Any],
    reasons: list[str],
    base: list[dict[str, Any]] | None,
    eff: float | None,
) -> dict[str, str]:
    """Why this row's timing or speedup should not be trusted as it stands (`reasons`: the
    run's own disturbance): {short name for a table cell: the reason in full}."""
    flags = {}
    if reasons:
        flags["disturbed"] = f"disturbed: {'; '.join(reasons)}"
    if base and run not in base:
        upset = [r for r in base if disturbance(r["summary"])]
        if upset and 2 * len(upset) >= len(base):
            first = upset[0]
            why = disturbance(first["summary"])[0]
            flags["baseline disturbed"] = f"baseline {first['name']} disturbed: {why}"
    # a one-process run's "efficiency" against its own repeats is their spread, not scaling
    if eff is not None and eff > EFFICIENCY_LIMIT and (run["summary"].get("workers") or 0) > 1:
        flags["above ideal"] = (
            f"efficiency {eff:g} is above 1 (faster than ideal): check the baseline's load "
            "and threads before believing it"
        )
    return flags


def find_baseline(
    run: dict[str, Any], runs: list[dict[str, Any]], strategy: str | None = None
) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The fair one-process baseline runs for `run` (its repeats: T(1) is their median), or
    None and the reason there is none. Fair: completed, one process, the same work (see
    BASELINE_KEYS), the same strategy (or `strategy` when asked for: a comparison across
    paradigms), the same torch threads per process, and of the run's own series and seed
    where there is one."""
    s = run["summary"]
    if s.get("status") != "completed":
        return None, f"run {s.get('status') or 'status unknown'}: left out of speedup"
    if not is_positive(s.get("train_seconds")):
        return None, "train seconds unknown: no speedup"
    unknown = [k for k in BASELINE_KEYS if s.get(k) is None]
    if unknown:
        return None, f"{', '.join(unknown)} unknown: no comparable baseline"
    want = strategy or s.get("strategy")
    same = [r for r in runs if is_one_process_twin(r["summary"], s)]
    same = [r for r in same if r["summary"].get("strategy") == want]
    timed = [r for r in same if is_positive(r["summary"].get("train_seconds"))]
    if not same:
        hint = "" if strategy else " (--baseline STRATEGY compares with another strategy's)"
        return None, f"{NO_BASELINE}, of strategy {want}{hint}"
    if not timed:
        return None, "the comparable one-process run has no train seconds"
    return closest_fair(run, timed)


def closest_fair(
    run: dict[str, Any], timed: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]] | None, str | None]:
    """Of the timed one-process twins, those of the run's own series and seed where there
    are some, with the run's torch threads; or None and why the threads differ."""
    s = run["summary"]
    # T(1) of the run's own series (same settings but workers, seed and repeat), so each
    # line of a speedup plot starts at 1; over seeds, the baseline of the run's own seed.
    series = [r for r in timed if r.get("series") and r.get("series") == run.get("series")]
    timed = series or timed
    closer = [r for r in timed if r["summary"].get("seed") == s.get("seed")]
    timed = closer or timed
    fair = [r for r in timed if threads_of(r["summary"]) == threads_of(s)]
    if not fair:
        other = timed[0]
        return None, (
            f"the one-process run {other['name']} used {threads_of(other['summary'])} torch "
            f"threads per process and this run {threads_of(s)}: not comparable (give both "
            "the same --set threads=N)"
        )
    return fair, None


def is_one_process_twin(candidate: dict[str, Any], summary: dict[str, Any]) -> bool:
    """A completed one-process run that did the same work as `summary` (the same samples
    within SAMPLES_TOLERANCE)."""
    same = all(candidate.get(k) == summary[k] for k in BASELINE_KEYS if k != "samples")
    theirs, ours = candidate.get("samples"), summary["samples"]
    return (
        candidate.get("status") == "completed"
        and candidate.get("processes") == 1
        and same
        and theirs is not None
        and abs(theirs - ours) <= SAMPLES_TOLERANCE * max(theirs, ours)
    )


def is_positive(value: Any) -> bool:
    """A number above zero."""
    return isinstance(value, int | float) and value > 0
