"""`distlab report`: load runs or sweeps, compare them row by row, and write every figure and
page for them into one folder (matplotlib on the Agg canvas, no pyplot).

Fair baselines and the flags that say when a timing is not to be trusted are in baseline.py,
the curves in curves.py, the pages in page.py, speedup and communication in scaling.py, the
network what-if in whatif.py and whatif_plot.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distlab.experiments import page, scaling, threats, tradeoff, whatif, whatif_plot
from distlab.experiments.baseline import (
    baseline_label,
    disturbance,
    efficiency,
    find_baseline,
    median_seconds,
    row_flags,
    threads_of,
)
from distlab.experiments.curves import plot_curves
from distlab.runs.directory import (
    CONFIG,
    REPEATS,
    SUMMARY,
    RunPaths,
    is_run_dir,
    load_run,
    runs_in,
)

if TYPE_CHECKING:
    from distlab.data.partition import Partition


def top_classes(row: np.ndarray, top: int = 3) -> str:
    """The largest classes of one client as 'class:count', largest first: '3:120 7:40'."""
    order = np.argsort(-row, kind="stable")[:top]
    return " ".join(f"{c}:{row[c]}" for c in order if row[c] > 0)


def partition_table_rows(p: Partition, top: int = 3) -> list[dict[str, Any]]:
    """Per client: size, number of classes it holds and its `top` largest classes."""
    counts = np.asarray(p.counts)
    return [
        {
            "client": i,
            "size": int(row.sum()),
            "classes": int((row > 0).sum()),
            "top": top_classes(row, top),
        }
        for i, row in enumerate(counts)
    ]


# --- checking the inputs ----------------------------------------------------------------------

# The columns `distlab report` prints, with short headers so they fit a terminal; summary.md
# and summary.json have every column.
CONSOLE_COLUMNS = {
    "run": "run",
    "status": "status",
    "strategy": "strategy",
    "workers": "workers",
    "samples": "samples",
    "final_accuracy": "final acc",
    "train_seconds": "train s",
    "baseline": "baseline",
    "speedup": "speedup",
    "efficiency": "efficiency",
    "bytes_per_step_measured": "bytes/step",
    "seconds_to_target": "s to target",
}
# Shown after those only when some run has them: runs that compressed or kept a simulated clock.
TRADEOFF_COLUMNS = {
    "compression_ratio": "compression",
    "sim_seconds": "sim s",
    "sim_seconds_to_target": "sim s to target",
}


def console_columns(rows: list[dict[str, Any]]) -> dict[str, str]:
    """The console table's columns: CONSOLE_COLUMNS, then the trade-off, privacy and attack
    ones some row knows."""
    optional = {**TRADEOFF_COLUMNS, **threats.THREAT_COLUMNS}
    extra = {k: v for k, v in optional.items() if any(r.get(k) is not None for r in rows)}
    return {**CONSOLE_COLUMNS, **extra}


def check_target(target: float | None) -> float | None:
    """The target accuracy, or ValueError when it is not in (0, 1]."""
    if target is not None and not 0 < target <= 1:
        raise ValueError(f"--target must be in (0, 1] (got {target})")
    return target


def check_out_dir(out: str | Path) -> Path:
    """The report directory, or ValueError when it cannot be a writable directory; checks
    without creating anything, so a bad run directory later leaves no trace."""
    out = Path(out)
    reason = None
    if out.exists() and not out.is_dir():
        reason = "it is an existing file"
    probe = out
    while not probe.exists():
        probe = probe.parent
    if reason is None and not probe.is_dir():
        reason = f"{str(probe)!r} is a file"
    elif reason is None and not os.access(probe, os.W_OK | os.X_OK):
        reason = f"{str(probe)!r} is not writable"
    if reason:
        raise ValueError(
            f"--out must be a directory that exists or can be created (got {str(out)!r}: {reason})"
        )
    return out


def check_baseline(strategy: str | None) -> None:
    """--baseline names a registered strategy, or ValueError with the allowed names."""
    if strategy is None:
        return
    # The API knows the strategies; importing it loads torch, so only when asked.
    from distlab.api import strategy_names

    names = strategy_names()
    if strategy not in names:
        raise ValueError(f"unknown --baseline strategy {strategy!r} (allowed: {', '.join(names)})")


def check_network(networks: str | None, latency: str):
    """The parsed --network speeds and --latency, or None without --network; ValueError for
    an unknown speed or latency, before anything is written."""
    if networks is None:
        return None
    return whatif.parse_networks(networks), whatif.parse_latency(latency)


def check_datasets(runs: list[dict[str, Any]], force: bool) -> None:
    """Speedup and accuracy against workers mean nothing across datasets: refused unless
    forced (then each run is still only compared with a baseline on its own dataset)."""
    datasets = sorted({str(r["summary"].get("dataset")) for r in runs})
    if len(datasets) > 1 and not force:
        raise ValueError(
            f"runs of different datasets ({', '.join(datasets)}) in one speedup plot: report "
            "them apart, or pass --force"
        )


# --- loading runs -----------------------------------------------------------------------------


def expand_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Each path as given when it is a run directory (see runs.directory.is_run_dir); the
    finished runs inside it when it is a sweep or a folder of runs; ValueError when a path
    holds no run."""
    if not paths:
        raise ValueError("give at least one run or sweep directory (got none)")
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise ValueError(f"run directory {str(path)!r} does not exist")
        if is_run_dir(path):
            found.append(path)
            continue
        # only finished runs: a report inside the sweep (compare's) has a summary.json of
        # its own and is no run, a cell still running has no summary yet
        inside = runs_in(path, finished=True)
        if not inside:
            raise ValueError(
                f"{str(path)!r} holds no run: a run directory has {CONFIG} and {SUMMARY}, "
                "a sweep directory has run directories"
            )
        found.extend(inside)
    return found


def load_runs(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """Summary, config and lead-rank events of each run (sweeps expanded to their cells);
    ValueError for a bad directory."""
    runs = []
    for run_dir in expand_run_dirs(run_dirs):
        result = load_run(run_dir)
        lead = result.summary.get("lead_rank")
        lead = 0 if lead is None else lead
        events = [e for e in result.events if e.get("rank") == lead]
        runs.append(
            {
                "name": run_dir.name,
                "dir": run_dir,
                "summary": result.summary,
                "config": result.config,
                "events": events,
            }
        )
    return runs


# --- rows -------------------------------------------------------------------------------------


def comparison_rows(
    runs: list[dict[str, Any]], target: float | None = None, baseline: str | None = None
) -> list[dict]:
    """One row per run. Speedup is T(1)/T(N), T(1) the median train seconds of the fair
    one-process runs of the same strategy (see find_baseline; of `baseline`'s strategy when
    given); efficiency is speedup / workers. Where no speedup can be given, speedup_note
    says why; `flags` says why a figure should not be trusted. Unknown figures stay None."""
    return [comparison_row(run, runs, target, baseline) for run in runs]


def comparison_row(
    run: dict[str, Any], runs: list[dict[str, Any]], target: float | None, baseline: str | None
) -> dict[str, Any]:
    """One run's row of comparison_rows."""
    s = run["summary"]
    base, note = find_baseline(run, runs, baseline)
    seconds = s.get("train_seconds")
    t1 = median_seconds(base) if base else None
    speedup = round(t1 / seconds, 3) if base else None
    workers = s.get("workers")
    eff = efficiency(speedup, workers)
    reasons = disturbance(s)
    flags = row_flags(run, reasons, base, eff)
    return {
        "run": run["name"],
        "status": s.get("status"),
        "strategy": s.get("strategy"),
        "workers": workers,
        "seed": s.get("seed"),
        "processes": s.get("processes"),
        "threads": threads_of(s),
        "samples": s.get("samples"),
        "final_accuracy": s.get("final_accuracy"),
        "best_accuracy": s.get("best_accuracy"),
        "train_seconds": seconds,
        "samples_per_second": s.get("samples_per_second"),
        "baseline": baseline_label(base),
        "baseline_strategy": base[0]["summary"].get("strategy") if base else None,
        "baseline_seconds": t1,
        "speedup": speedup,
        "efficiency": eff,
        "speedup_note": note,
        "disturbed": bool(reasons),
        "flagged": ", ".join(flags) or None,
        "flags": "; ".join(flags.values()) or None,
        "bytes_per_step_measured": s.get("bytes_per_step_measured"),
        "bytes_per_step_analytic": s.get("bytes_per_step_analytic"),
        "seconds_to_target": (
            time_to_accuracy(run["events"], target) if target is not None else None
        ),
        **tradeoff.row_figures(run, target),
        **threats.row_figures(run, runs),
    }


def time_to_accuracy(events: list[dict[str, Any]], target: float) -> float | None:
    """Seconds from the start of training to the first eval at or above `target`; None when
    no eval got there or the start of training is unknown."""
    start = next((e.get("seconds") for e in events if e.get("phase") == "train"), None)
    evals = [e for e in events if e.get("kind") == "eval" and e.get("seconds") is not None]
    hit = next((e for e in evals if (e.get("accuracy") or 0.0) >= target), None)
    return round(hit["seconds"] - start, 3) if hit and start is not None else None


def series_rows(
    runs: list[dict[str, Any]], target: float | None, baseline: str | None
) -> list[dict[str, Any]]:
    """The comparison rows, each run and row marked with its series (the settings it shares
    with the runs it scales against) before the baselines are looked for."""
    labels = scaling.series_labels([r["config"] for r in runs])
    if baseline:
        labels = [f"{label} (vs {baseline})" for label in labels]
    for run, label in zip(runs, labels, strict=True):
        run["series"] = label
    rows = comparison_rows(runs, target, baseline)
    for row, label in zip(rows, labels, strict=True):
        row["series"] = label
    return rows


def machine_cores(runs: list[dict[str, Any]]) -> int | None:
    """The fewest cores any run saw (from its summary's environment), or None."""
    cores = [(r["summary"].get("environment") or {}).get("cores") for r in runs]
    known = [c for c in cores if isinstance(c, int)]
    return min(known) if known else None


# Settings that differ between repeats of one cell without making it other work.
REPEAT_FREE = ("name", "out_dir")
# The figures the repeats table gives as median [min, max].
SPREAD_KEYS = ("train_seconds", "speedup", "efficiency", "final_accuracy")


def repeat_keys(runs: list[dict[str, Any]]) -> list[str]:
    """A key per run that repeats of one config share (its config less name and directory)."""
    keys = []
    for run in runs:
        config = {k: v for k, v in (run.get("config") or {}).items() if k not in REPEAT_FREE}
        keys.append(json.dumps(config, sort_keys=True, default=str))
    return keys


def repeat_rows(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """One row per config that ran more than once: how many runs, the median and min-max of
    train seconds, speedup, efficiency and accuracy over them, and how many were disturbed
    or flagged. Empty when no config repeats."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row, key in zip(rows, keys, strict=True):
        groups.setdefault(key, []).append(row)
    if all(len(g) == 1 for g in groups.values()):
        return []
    return [repeat_row(group) for group in groups.values()]


def repeat_row(group: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeats table's row for the rows of one config."""
    first = group[0]
    record = {
        "run": strip_repeat(first["run"]),
        "runs": len(group),
        "strategy": first["strategy"],
        "workers": first["workers"],
        "threads": first["threads"],
    }
    for key in SPREAD_KEYS:
        record[key] = spread([r[key] for r in group if r["status"] == "completed"])
    record["disturbed_runs"] = sum(r["disturbed"] for r in group)
    record["flagged_runs"] = sum(r["flags"] is not None for r in group)
    return record


def strip_repeat(name: str) -> str:
    """A cell's name without its repeat suffix: allreduce_workers-2_r3 -> allreduce_workers-2."""
    head, sep, tail = name.rpartition("_r")
    return head if sep and tail.isdigit() else name


def spread(values: list[float | None]) -> dict[str, float] | None:
    """{median, min, max} of the known values, None when there are none.

    >>> spread([2.0, None, 1.0, 4.0])
    {'median': 2.0, 'min': 1.0, 'max': 4.0}
    """
    known = [v for v in values if v is not None]
    if not known:
        return None
    return {
        "median": round(float(np.median(known)), 4),
        "min": round(min(known), 4),
        "max": round(max(known), 4),
    }


# --- writing the files ------------------------------------------------------------------------


def write_report(
    run_dirs: list[str | Path],
    out: str | Path,
    target: float | None = None,
    networks: str | None = None,
    latency: str = "50us",
    force: bool = False,
    baseline: str | None = None,
) -> list[dict[str, Any]]:
    """Every figure and page for a set of runs or sweeps: curves.png, speedup.png and
    accuracy.png (when the runs span several worker counts), communication.png,
    partition-*.png, whatif.png (with `networks`), report.md, report.html, results.csv,
    summary.json and, where runs repeat one config, repeats.json. Speedups are against the
    same strategy's one-process runs unless `baseline` names the strategy to compare with.
    Every input is checked before anything is written."""
    check_target(target)
    check_baseline(baseline)
    out = check_out_dir(out)
    whatif_plan = check_network(networks, latency)
    runs = load_runs(run_dirs)
    check_datasets(runs, force)
    rows = series_rows(runs, target, baseline)
    make_out_dir(out)
    notes = [f"{r['run']}: {r['speedup_note']}" for r in rows if r["speedup_note"]]
    write_figures(runs, rows, out)
    if whatif_plan is not None:
        notes += write_whatif(runs, rows, whatif_plan, out / "whatif.png")
    notes += [f"{r['run']}: {r['flags']}" for r in rows if r["flags"]]
    write_pages(runs, rows, notes, out)
    return rows


def make_out_dir(out: Path) -> None:
    """Create the report directory, or ValueError in one line when the system refuses."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {str(out)!r} cannot be created: {exc.strerror}") from None


def write_figures(runs: list[dict[str, Any]], rows: list[dict[str, Any]], out: Path) -> None:
    """curves.png; speedup.png and accuracy.png over several worker counts; communication.png
    where some run counted bytes; tradeoff.png where some run counted bytes or kept a
    simulated clock; privacy.png where some run was private; robustness.png where some run
    was attacked; the runs' partition figures."""
    plot_curves(runs, out / "curves.png")
    labels = [r["series"] for r in rows]
    if len({r["workers"] for r in rows}) > 1:
        scaling.plot_speedup(rows, labels, out / "speedup.png", machine_cores(runs))
        scaling.plot_accuracy(rows, labels, out / "accuracy.png")
    summaries = [r["summary"] for r in runs]
    if any(scaling.byte_figures(s)["total_bytes"] for s in summaries):
        scaling.plot_communication([r["name"] for r in runs], summaries, out / "communication.png")
    tradeoff.plot_tradeoff(runs, rows, out / "tradeoff.png")
    threats.plot_privacy(runs, out / "privacy.png")
    threats.plot_robustness(runs, out / "robustness.png")
    write_partitions(runs, out)


def write_partitions(runs: list[dict[str, Any]], out: Path) -> list[Path]:
    """partition-<run>.png for each distinct division of the data the runs used."""
    seen: set[str] = set()
    written = []
    for run in runs:
        paths = RunPaths(run["dir"])
        record, figure = paths.partition_json, paths.partition_png
        if not (record.is_file() and figure.is_file()):
            continue
        counts = json.dumps(json.loads(record.read_text()).get("counts"))
        if counts in seen:
            continue
        seen.add(counts)
        target = out / f"partition-{run['name']}.png"
        target.write_bytes(figure.read_bytes())
        written.append(target)
    return written


def write_whatif(runs, rows, plan, path: Path) -> list[str]:
    """whatif.png: the alpha-beta model's speedup on each network beside the measured points;
    returns a note for each run the model does not cover."""
    networks, alpha = plan
    predicted, notes = [], []
    for run in runs:
        got, reason = whatif.predict(run["summary"], networks, alpha, name=run["name"])
        predicted += got
        if reason:
            notes.append(f"{run['name']}: no what-if model: {reason}")
    # The model predicts speedup over the same strategy's N = 1; a speedup over another
    # strategy's run is another figure and stays off this plot.
    measured = [
        r for r in rows if r.get("speedup") is not None and r["baseline_strategy"] == r["strategy"]
    ]
    if predicted:
        whatif_plot.plot_whatif(predicted, measured, path)
    return notes


def write_pages(
    runs: list[dict[str, Any]], rows: list[dict[str, Any]], notes: list[str], out: Path
) -> None:
    """report.md, report.html, results.csv, the rows as the report's summary.json and, where
    runs repeat one config, the repeats table as repeats.json."""
    groups = repeat_rows(rows, repeat_keys(runs))
    page.write_markdown(out, rows, runs, notes, groups)
    page.write_html(out, rows, runs, notes, groups)
    page.write_csv(out, rows, runs)
    (out / SUMMARY).write_text(json.dumps(rows, indent=2) + "\n")
    if groups:
        (out / REPEATS).write_text(json.dumps(groups, indent=2) + "\n")
