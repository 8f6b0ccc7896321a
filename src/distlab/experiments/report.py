"""Tables and plots that compare run directories (matplotlib on the Agg canvas, no pyplot)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter, MaxNLocator

from distlab.data.partition import Partition
from distlab.plots import check_plot, class_colors, new_figure, save_figure
from distlab.runs.directory import load_run


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


# --- comparing runs ---------------------------------------------------------------------------

# A one-process run is a fair baseline only when it did the same work: same data, same model,
# as many samples, and the same meaning of --batch-size (global batch vs per worker/client).
BASELINE_KEYS = ("dataset", "model", "samples", "batch_size_meaning")
NO_BASELINE = (
    "no completed one-process run with the same dataset, model, samples (within 1%) and "
    "batch meaning"
)
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
# Training progress is counted in optimizer steps or in federated rounds; the two are not on
# one scale, so each gets its own panels.
UNITS = ("step", "round")


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


def expand_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Each path as given when it is a run directory (it has summary.json); the run
    directories inside it when it is a sweep or a folder of runs; ValueError when a path
    holds no run."""
    if not paths:
        raise ValueError("give at least one run or sweep directory (got none)")
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise ValueError(f"run directory {str(path)!r} does not exist")
        if (path / "summary.json").is_file() or (path / "config.json").is_file():
            found.append(path)
            continue
        # a run has its config beside its summary; a report inside the sweep (compare's)
        # has a summary.json of its own and is no run
        inside = sorted(p for p in path.iterdir() if is_run_dir(p))
        if not inside:
            raise ValueError(
                f"{str(path)!r} holds no run: a run directory has summary.json, a sweep "
                "directory has run directories"
            )
        found.extend(inside)
    return found


def is_run_dir(path: Path) -> bool:
    return (path / "summary.json").is_file() and (path / "config.json").is_file()


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


def comparison_rows(
    runs: list[dict[str, Any]], target: float | None = None, baseline: str | None = None
) -> list[dict]:
    """One row per run. Speedup is T(1)/T(N), T(1) the median train seconds of the fair
    one-process runs of the same strategy (see find_baseline; of `baseline`'s strategy when
    given); efficiency is speedup / workers. Where no speedup can be given, speedup_note
    says why; `flags` says why a figure should not be trusted. Unknown figures stay None."""
    rows = []
    for run in runs:
        s = run["summary"]
        base, note = find_baseline(run, runs, baseline)
        seconds = s.get("train_seconds")
        t1 = median_seconds(base) if base else None
        speedup = round(t1 / seconds, 3) if base else None
        workers = s.get("workers")
        eff = efficiency(speedup, workers)
        reasons = disturbance(s)
        flags = row_flags(run, reasons, base, eff)
        rows.append(
            {
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
            }
        )
    return rows


def efficiency(speedup: float | None, workers: int | None) -> float | None:
    return round(speedup / workers, 3) if speedup is not None and workers else None


def median_seconds(group: list[dict[str, Any]]) -> float:
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


# Workers that split a data set unevenly round their shares up: 3 workers walk 12,006 of
# 12,000 samples. Within this fraction it is the same work.
SAMPLES_TOLERANCE = 0.01


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
    return isinstance(value, int | float) and value > 0


def time_to_accuracy(events: list[dict[str, Any]], target: float) -> float | None:
    """Seconds from the start of training to the first eval at or above `target`; None when
    no eval got there or the start of training is unknown."""
    start = next((e.get("seconds") for e in events if e.get("phase") == "train"), None)
    evals = [e for e in events if e.get("kind") == "eval" and e.get("seconds") is not None]
    hit = next((e for e in evals if (e.get("accuracy") or 0.0) >= target), None)
    return round(hit["seconds"] - start, 3) if hit and start is not None else None


def run_unit(run: dict[str, Any]) -> str | None:
    """'round' for a federated run, 'step' for one that counts optimizer steps, None for a
    run that stopped before either."""
    kinds = {e.get("kind") for e in run["events"]}
    return next((u for u in reversed(UNITS) if u in kinds), None)


def run_label(run: dict[str, Any]) -> str:
    s = run["summary"]
    parts = [str(s.get("strategy") or "?"), f"{s.get('workers') or '?'}w"]
    if s.get("status") != "completed":
        parts.append(str(s.get("status") or "status unknown"))
    return f"{run['name']} ({', '.join(parts)})"


def panel_layout(runs: list[dict[str, Any]]) -> list[list[str]]:
    """Rows of panel names: loss and accuracy for each unit some run counts in, next to one
    accuracy-over-seconds panel that spans the rows (seconds mean the same for every run)."""
    units = [u for u in UNITS if any(run_unit(r) == u for r in runs)]
    return [[f"loss-{u}", f"acc-{u}", "time"] for u in units] or [["time"]]


def plot_curves(runs: list[dict[str, Any]], path: str | Path) -> Path:
    """Training loss and test accuracy per step, the same per round on their own panels (each
    drawn only when some run counts in that unit), and test accuracy over seconds of training
    for all runs. Runs that did not complete are dashed."""
    path = check_plot(path)
    mosaic = panel_layout(runs)
    fig = new_figure(15 if len(mosaic[0]) > 1 else 7, 1.2 + 3.6 * len(mosaic))
    axes = fig.subplot_mosaic(mosaic)
    handles = []
    for run, color in zip(runs, class_colors(len(runs)), strict=True):
        style = {"color": color, "ls": "-" if run["summary"].get("status") == "completed" else "--"}
        draw_run(run, axes, style)
        handles.append(Line2D([], [], marker="o", ms=3, label=run_label(run), **style))
    for loss_name, acc_name, _ in (row for row in mosaic if len(row) == 3):
        label_unit_axes(axes[loss_name], axes[acc_name], loss_name.removeprefix("loss-"))
    axes["time"].set(
        xlabel="seconds of training", ylabel="test accuracy", title="Test accuracy over wall time"
    )
    for ax in axes.values():
        finish_axes(ax)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)), fontsize=8)
    save_figure(fig, path)
    return path


class PlainLogFormatter(LogFormatter):
    """Log-axis labels as plain numbers ("2.305", not "2.3 x 10^0"); matplotlib still
    chooses which minor ticks get a label."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return f"{x:.4g}"


def label_unit_axes(loss_ax: Axes, acc_ax: Axes, unit: str) -> None:
    name = "round (federated)" if unit == "round" else "step"
    loss_ax.set(
        xlabel=name, ylabel="training loss", yscale="log", title=f"Training loss per {unit}"
    )
    loss_ax.yaxis.set_major_formatter(PlainLogFormatter())
    loss_ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))
    acc_ax.set(xlabel=name, ylabel="test accuracy", title=f"Test accuracy per {unit}")
    for ax in (loss_ax, acc_ax):
        # Steps and rounds are counts: no tick at round 2.5.
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


def draw_run(run: dict[str, Any], axes: dict[str, Axes], style: dict[str, Any]) -> None:
    """One run's lines: loss and accuracy on its unit's panels, accuracy over seconds."""
    events, unit = run["events"], run_unit(run)
    evals = [e for e in events if e.get("kind") == "eval" and e.get("accuracy") is not None]
    if unit is not None:
        units = [e for e in events if e.get("kind") == unit and e.get("loss") is not None]
        # Numbered by the event's own count; the position stands in where it is missing.
        x = [e.get(unit) or i for i, e in enumerate(units, 1)]
        if units:
            axes[f"loss-{unit}"].plot(x, smooth([e["loss"] for e in units]), lw=1.2, **style)
        counted = [e for e in evals if e.get(unit) is not None]
        if counted:
            axes[f"acc-{unit}"].plot(
                [e[unit] for e in counted], [e["accuracy"] for e in counted], marker="o", ms=3,
                **style,
            )  # fmt: skip
    start = next((e.get("seconds") for e in events if e.get("phase") == "train"), None) or 0.0
    timed = [e for e in evals if e.get("seconds") is not None]
    if timed:
        axes["time"].plot(
            [e["seconds"] - start for e in timed], [e["accuracy"] for e in timed], marker="o",
            ms=3, **style,
        )  # fmt: skip


def finish_axes(ax: Axes) -> None:
    """Grid, and a note on a panel no run drew on, so an empty panel is not read as a bug."""
    ax.grid(alpha=0.3)
    if ax.get_ylabel() == "test accuracy":
        # Autoscaling around runs that all reach 1.0 would show accuracies above 1.
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, 0.0), min(high, 1.01))
    if not ax.lines:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def smooth(values: list[float], window: int = 10) -> np.ndarray:
    """Running mean over `window` points, so per-step noise does not hide the trend."""
    arr = np.asarray(values, dtype=float)
    if len(arr) < window:
        return arr
    kernel = np.ones(window) / window
    head = np.cumsum(arr[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(arr, kernel, mode="valid")])


def machine_cores(runs: list[dict[str, Any]]) -> int | None:
    """The fewest cores any run saw (from its summary's environment), or None."""
    cores = [(r["summary"].get("environment") or {}).get("cores") for r in runs]
    known = [c for c in cores if isinstance(c, int)]
    return min(known) if known else None


def check_datasets(runs: list[dict[str, Any]], force: bool) -> None:
    """Speedup and accuracy against workers mean nothing across datasets: refused unless
    forced (then each run is still only compared with a baseline on its own dataset)."""
    datasets = sorted({str(r["summary"].get("dataset")) for r in runs})
    if len(datasets) > 1 and not force:
        raise ValueError(
            f"runs of different datasets ({', '.join(datasets)}) in one speedup plot: report "
            "them apart, or pass --force"
        )


def write_partitions(runs: list[dict[str, Any]], out: Path) -> list[Path]:
    """partition-<run>.png for each distinct division of the data the runs used."""
    seen: set[str] = set()
    written = []
    for run in runs:
        record, figure = run["dir"] / "partition.json", run["dir"] / "partition.png"
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
    from distlab.experiments import page, scaling

    check_target(target)
    check_baseline(baseline)
    out = check_out_dir(out)
    whatif_plan = check_network(networks, latency)
    runs = load_runs(run_dirs)
    check_datasets(runs, force)
    labels = scaling.series_labels([r["config"] for r in runs])
    if baseline:
        labels = [f"{label} (vs {baseline})" for label in labels]
    for run, label in zip(runs, labels, strict=True):
        run["series"] = label
    rows = comparison_rows(runs, target, baseline)
    for row, label in zip(rows, labels, strict=True):
        row["series"] = label
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {str(out)!r} cannot be created: {exc.strerror}") from None
    notes = [f"{r['run']}: {r['speedup_note']}" for r in rows if r["speedup_note"]]
    plot_curves(runs, out / "curves.png")
    if len({r["workers"] for r in rows}) > 1:
        scaling.plot_speedup(rows, labels, out / "speedup.png", machine_cores(runs))
        scaling.plot_accuracy(rows, labels, out / "accuracy.png")
    summaries = [r["summary"] for r in runs]
    if any(scaling.byte_figures(s)["total_bytes"] for s in summaries):
        scaling.plot_communication([r["name"] for r in runs], summaries, out / "communication.png")
    write_partitions(runs, out)
    if whatif_plan is not None:
        notes += write_whatif(runs, rows, whatif_plan, out / "whatif.png")
    notes += [f"{r['run']}: {r['flags']}" for r in rows if r["flags"]]
    groups = repeat_rows(rows, repeat_keys(runs))
    page.write_markdown(out, rows, runs, notes, groups)
    page.write_html(out, rows, runs, notes, groups)
    page.write_csv(out, rows, runs)
    (out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    if groups:
        (out / "repeats.json").write_text(json.dumps(groups, indent=2) + "\n")
    return rows


def check_baseline(strategy: str | None) -> None:
    """--baseline names a registered strategy, or ValueError with the allowed names."""
    if strategy is None:
        return
    from distlab.strategies import STRATEGIES

    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown --baseline strategy {strategy!r} (allowed: {', '.join(sorted(STRATEGIES))})"
        )


# Settings that differ between repeats of one cell without making it other work.
REPEAT_FREE = ("name", "out_dir")


def repeat_keys(runs: list[dict[str, Any]]) -> list[str]:
    """A key per run that repeats of one config share (its config less name and directory)."""
    keys = []
    for run in runs:
        config = {k: v for k, v in (run.get("config") or {}).items() if k not in REPEAT_FREE}
        keys.append(json.dumps(config, sort_keys=True, default=str))
    return keys


# The figures the repeats table gives as median [min, max].
SPREAD_KEYS = ("train_seconds", "speedup", "efficiency", "final_accuracy")


def repeat_rows(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """One row per config that ran more than once: how many runs, the median and min-max of
    train seconds, speedup, efficiency and accuracy over them, and how many were disturbed
    or flagged. Empty when no config repeats."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row, key in zip(rows, keys, strict=True):
        groups.setdefault(key, []).append(row)
    if all(len(g) == 1 for g in groups.values()):
        return []
    out = []
    for group in groups.values():
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
        out.append(record)
    return out


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


def check_network(networks: str | None, latency: str):
    """The parsed --network speeds and --latency, or None without --network; ValueError for
    an unknown speed or latency, before anything is written."""
    if networks is None:
        return None
    from distlab.experiments import whatif

    return whatif.parse_networks(networks), whatif.parse_latency(latency)


def write_whatif(runs, rows, plan, path: Path) -> list[str]:
    """whatif.png: the alpha-beta model's speedup on each network beside the measured points;
    returns a note for each run the model does not cover."""
    from distlab.experiments import whatif

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
        whatif.plot_whatif(predicted, measured, path)
    return notes
