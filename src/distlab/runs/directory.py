"""The run directory: create it, write its records, read it back.

`OUT_DIR/NAME/` holds config.json, events/ (one JSONL file per rank while the run is live),
events.jsonl (merged), summary.json, model.pt, partition.json and partition.png, errors/
(one report per failed rank) and, for a deployed run, deploy/. Everything that reads runs
(report, show, sweeps, the dashboard) finds and loads them here (`is_run_dir`, `find_runs`,
`load_run`, `load_sweep`), never through the API that launches them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distlab.runs.events import read_events

if TYPE_CHECKING:
    from distlab.config import RunConfig
    from distlab.data.partition import Partition


# The run directory's layout; nothing outside runs/ spells these names.
CONFIG = "config.json"
SUMMARY = "summary.json"
EVENTS_DIR = "events"
MERGED_EVENTS = "events.jsonl"
MODEL = "model.pt"
PARTITION_JSON = "partition.json"
PARTITION_PNG = "partition.png"
CHECKPOINTS_DIR = "checkpoints"
RESUME = "resume.json"
FAULT = "fault.json"
ELASTIC = "elastic.json"
ERRORS_DIR = "errors"
DEPLOY_DIR = "deploy"  # a deployed run's job, app bundle and Flower logs
# Rank 0's nonce while the ranks check who sees the directory (machines may not share it).
MARKER = ".rank0-marker"
# Files of a folder of runs: a sweep's plan, a search's plan, a report's repeats.
SWEEP = "sweep.json"
TUNE = "tune.json"
REPEATS = "repeats.json"


@dataclass(frozen=True)
class RunPaths:
    """Where each record of one run directory lives. The API builds it and hands it down:
    ranks, launchers and checkpoints write where it says without knowing the layout."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY

    @property
    def events_dir(self) -> Path:
        return self.root / EVENTS_DIR

    @property
    def merged_events(self) -> Path:
        return self.root / MERGED_EVENTS

    @property
    def model(self) -> Path:
        return self.root / MODEL

    @property
    def partition_json(self) -> Path:
        return self.root / PARTITION_JSON

    @property
    def partition_png(self) -> Path:
        return self.root / PARTITION_PNG

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    @property
    def resume(self) -> Path:
        return self.root / RESUME

    @property
    def fault(self) -> Path:
        return self.root / FAULT

    @property
    def elastic(self) -> Path:
        return self.root / ELASTIC

    @property
    def errors_dir(self) -> Path:
        return self.root / ERRORS_DIR

    @property
    def deploy(self) -> Path:
        return self.root / DEPLOY_DIR

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    def rank_events(self, rank: int) -> Path:
        """events/rank-R.jsonl: one rank's events while the run is live."""
        return self.events_dir / f"rank-{rank}.jsonl"

    def rank_event_files(self) -> list[Path]:
        """events/rank-R.jsonl of every rank so far, in rank order (rank-2 before rank-10)."""
        ranks = self.events_dir.glob("rank-*.jsonl")
        return sorted(ranks, key=lambda p: (len(p.name), p.name))

    def event_files(self) -> list[Path]:
        """Where the run's events are: the merged file once the run is finished, else every
        rank's own file."""
        if self.summary.is_file() and self.merged_events.is_file():
            return [self.merged_events]
        return self.rank_event_files()

    def rank_error(self, rank: int) -> Path:
        """errors/rank-R.json: what a failed rank reported."""
        return self.errors_dir / f"rank-{rank}.json"


@dataclass
class RunResult:
    """A finished (or failed) run: its directory, summary and events."""

    run_dir: Path
    summary: dict[str, Any]
    events: list[dict[str, Any]]
    config: dict[str, Any]

    def frame(self):
        """Events as a pandas DataFrame (pandas is needed for this one method)."""
        import pandas as pd

        return pd.DataFrame(self.events)


def default_name(cfg: RunConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{cfg.strategy.name}-{cfg.dataset}-{cfg.model}-{stamp}"


def prepare_run_dir(cfg: RunConfig, overwrite: bool = False) -> Path:
    """Create OUT_DIR/NAME and write config.json; refuse an existing one unless overwrite."""
    out = Path(cfg.out_dir)
    name = cfg.name or default_name(cfg)
    run_dir = out / name
    if run_dir.exists() and cfg.name is None:
        run_dir = unique_dir(out, name)
    elif run_dir.exists() and not overwrite:
        raise ValueError(f"run directory {str(run_dir)!r} exists (use --overwrite to replace it)")
    elif run_dir.exists() and not is_run_dir(run_dir):
        # --overwrite deletes the directory: never one that is not a run (a typo in --name).
        raise ValueError(f"{str(run_dir)!r} is not a run directory; --overwrite replaces runs only")
    check_writable(out)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    paths = RunPaths(run_dir)
    paths.events_dir.mkdir(parents=True)
    paths.config.write_text(cfg.to_json() + "\n")
    return run_dir


def unique_dir(out: Path, name: str) -> Path:
    n = 2
    while (out / f"{name}-{n}").exists():
        n += 1
    return out / f"{name}-{n}"


def check_writable(out: Path) -> None:
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"out_dir {str(out)!r} is not writable")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"out_dir {str(out)!r} is not writable: {exc.strerror}") from None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a reader never sees half a summary."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    # A run directory copied in part or cut off by a crash gets one line, not a traceback.
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(path)!r} is not valid JSON ({exc})") from None


def load_run(path: str | Path) -> RunResult:
    """Read a run directory written by `distlab.run`."""
    run_dir = Path(path)
    paths = RunPaths(run_dir)
    if not paths.summary.is_file():
        raise ValueError(f"{str(run_dir)!r} is not a finished run directory (no {SUMMARY})")
    summary, config = read_json(paths.summary), read_json(paths.config)
    return RunResult(run_dir, summary, read_events(paths.merged_events), config)


# --- finding runs and sweeps ---------------------------------------------------------------


def is_run_dir(path: str | Path, finished: bool = False) -> bool:
    """Whether `path` is a run directory: it has config.json, written before any process
    starts, so a live run is one too. `finished` asks also for summary.json, which the
    run writes last (a report inside a sweep has a summary of its own and is no run)."""
    paths = RunPaths(Path(path))
    return paths.config.is_file() and (not finished or paths.summary.is_file())


def subdirs(path: str | Path) -> list[Path]:
    """Visible subdirectories, sorted; none when the folder cannot be read."""
    try:
        return sorted(p for p in Path(path).iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def runs_in(folder: str | Path, finished: bool = False) -> list[Path]:
    """The run directories directly inside `folder` (a sweep's cells, a folder of runs),
    sorted by name."""
    return [p for p in subdirs(folder) if is_run_dir(p, finished)]


def find_runs(root: str | Path, finished: bool = False) -> list[tuple[Path, str | None]]:
    """Run directories under root, each with the relative path of the folder holding them
    (a sweep's, or None at the top): root itself when it is a run, else its run directories
    and those one level further down."""
    root = Path(root)
    if is_run_dir(root, finished):
        return [(root, None)]
    found: list[tuple[Path, str | None]] = []
    for child in subdirs(root):
        if is_run_dir(child, finished):
            found.append((child, None))
            continue
        group = child.relative_to(root).as_posix()
        found += [(inner, group) for inner in runs_in(child, finished)]
    return found


def read_json_or_none(path: str | Path) -> dict[str, Any] | None:
    """A JSON object, or None when the file is missing, half written or not an object: for
    readers that follow directories other processes are still writing."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def sweep_file(root: str | Path) -> Path:
    """A sweep directory's record of its plan and each cell's outcome."""
    return Path(root) / SWEEP


def is_sweep_dir(path: str | Path) -> bool:
    return sweep_file(path).is_file()


def load_sweep(root: str | Path) -> dict[str, Any] | None:
    """A sweep directory's record (name, base, cells with their status); None when `root`
    holds no readable one."""
    return read_json_or_none(sweep_file(root))


def find_sweeps(root: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """The sweep directories directly inside root, sorted, each with its record."""
    found = [(child, load_sweep(child)) for child in subdirs(root)]
    return [(child, record) for child, record in found if record is not None]


def partition_record(p: Partition) -> dict[str, Any]:
    """JSON-ready description: scheme and its parameters, sizes, counts and metrics."""
    from distlab.data.partition import partition_metrics

    params = p.config.model_dump(exclude={"scheme"}) if p.config is not None else {}
    return {
        "scheme": p.scheme,
        "holder": p.holder,
        "source": p.source,
        "params": params,
        "clients": len(p.indices),
        "sizes": [int(s) for s in p.sizes],
        "counts": np.asarray(p.counts).astype(int).tolist(),
        "metrics": partition_metrics(p),
        **({} if p.attackers is None else {"attackers": p.attackers}),
    }


def write_partition_record(run_dir: str | Path, partition: Partition) -> Path:
    """Write run_dir/partition.json and run_dir/partition.png (stacked bars); returns the
    JSON path."""
    path = write_partition_json(run_dir, partition)
    write_partition_plot(run_dir)
    return path


def write_partition_json(run_dir: str | Path, partition: Partition) -> Path:
    """Write run_dir/partition.json, the record of who trains on what; returns its path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = RunPaths(run_dir).partition_json
    path.write_text(json.dumps(partition_record(partition), indent=2) + "\n")
    return path


def write_partition_plot(run_dir: str | Path) -> Path | None:
    """Draw run_dir/partition.png (stacked bars) from run_dir/partition.json; None when the
    run has no partition record. A run draws it once it has trained: matplotlib and the
    drawing cost about half a second that would otherwise delay the first step."""
    paths = RunPaths(Path(run_dir))
    source = paths.partition_json
    if not source.is_file():
        return None
    record = read_json(source)
    from distlab.plots import plot_partition  # matplotlib: only when there is a partition

    holder = record.get("holder") or "client"  # records written before holders were named
    counts, title = np.asarray(record["counts"]), partition_title(record)
    return plot_partition(counts, paths.partition_png, "bar", title, holder)


def partition_title(record: dict[str, Any]) -> str:
    """What a partition figure shows: '2 workers: the random sampler's first epoch', or
    'dirichlet partition over 10 clients, TV distance 0.412'."""
    parts, holder = len(record["counts"]), record.get("holder") or "client"
    if record.get("source"):
        return f"{parts} {holder}s: {record['source']}"
    tv = record["metrics"]["tv_distance"]
    return f"{record['scheme']} partition over {parts} {holder}s, TV distance {tv:.3f}"
