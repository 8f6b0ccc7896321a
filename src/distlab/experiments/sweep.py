"""Sweeps: one base config, a grid of settings, one run directory per cell.

`plan_sweep` expands `--grid KEY=V1,V2` options (or a sweep file with `base`, `grid` and
`cells`) into cells and validates every cell's config before anything runs; `run_sweep`
runs the cells as `distlab run` processes into SWEEP_DIR/<cell>/, one after another or
`jobs` at once within the cores. A cell is finished when its summary.json says completed
(summary.json is written last and atomically), so rerunning the same command resumes: it
skips finished cells and reruns failed, interrupted and half-written ones. A failed cell is
recorded with its one-line cause and the others go on. Each cell process dies with the
sweep (the kernel sends it SIGTERM), so killing the sweep leaves no process behind.

Grids multiply: `--grid workers=1,2 --grid seed=0,1` is four cells. Explicit cells (a sweep
file's `cells` list) are each combined with the grid. Strategy keys of the base config
(`strategy.period`) apply to the cells whose strategy takes them.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distlab.config import (
    FLAG_KEYS,
    NAME_MAX,
    config_field,
    read_config_file,
    set_dotted,
    validate_config,
)
from distlab.runtime.failures import RunFailed, RunInterrupted, RunTerminated, Terminated
from distlab.runtime.signals import set_parent_death_signal, sigterm_raises

PLAN_FILE = "sweep.json"
# Keys the sweep sets itself: each cell's run directory is SWEEP_DIR/<cell>.
RESERVED_KEYS = ("name", "out_dir")
# Short names of dotted keys in cell names: allreduce_workers-2_lr-0.1 (a strategy by its
# name alone).
SHORT_KEYS = {v: k for k, v in FLAG_KEYS.items()}
# Seconds a stopped cell gets to record itself before it is killed.
STOP_GRACE_SECONDS = 30.0
SWEEP_FILE_KEYS = ("name", "base", "grid", "cells", "repeats")
# Far more repeats than any timing needs; a typo such as 1000 would run for days.
MAX_REPEATS = 100


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: the settings that make it (dotted keys) and the config it runs."""

    name: str
    values: dict[str, Any]
    config: dict[str, Any]
    processes: int
    repeat: int = 1


@dataclass(frozen=True)
class SweepPlan:
    name: str
    root: Path
    base: dict[str, Any]
    cells: tuple[Cell, ...]

    def fingerprint(self) -> list[dict[str, Any]]:
        """What makes two plans the same sweep: the cells and what each runs."""
        return [
            {"name": c.name, "values": c.values, "config": c.config, "repeat": c.repeat}
            for c in self.cells
        ]


@dataclass
class CellResult:
    cell: Cell
    status: str
    seconds: float | None = None
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False


# --- planning --------------------------------------------------------------------------------


def canonical_key(name: str, where: str = "--grid") -> str:
    """The dotted config key for a run flag (`batch-size`, `lr`) or a config key
    (`strategy.period`); ValueError naming the field when it is neither."""
    key = name.strip()
    flag = key.replace("-", "_")
    key = FLAG_KEYS.get(flag, key if "." in key else flag)
    if key in RESERVED_KEYS:
        raise ValueError(f"{where} cannot set {name!r}: the sweep names each cell's run itself")
    if config_field(key) is None:
        raise ValueError(
            f"unknown field {name!r} in {where} (use a run flag such as workers, strategy, "
            "seed, lr, batch-size, or a config key such as strategy.period)"
        )
    return key


def parse_grid(text: str) -> tuple[str, list[Any]]:
    """`KEY=V1,V2,...` -> (dotted key, values), each value read as YAML (2 is an int)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"bad --grid {text!r}: expected KEY=V1,V2, e.g. workers=1,2,4")
    values = [yaml.safe_load(v) for v in raw.split(",") if v.strip()]
    if not values:
        raise ValueError(f"--grid {text!r} has no values: expected KEY=V1,V2")
    return canonical_key(key), values


def read_sweep_file(path: Path) -> dict[str, Any]:
    """A sweep file: `base` (a config mapping), `grid` (key -> list of values), `cells` (a
    list of mappings) and an optional `name`. YAML, TOML or JSON."""
    data = read_config_file(path)
    unknown = sorted(set(data) - set(SWEEP_FILE_KEYS))
    if unknown:
        raise ValueError(
            f"sweep file {str(path)!r}: unknown key {unknown[0]!r} "
            f"(allowed: {', '.join(SWEEP_FILE_KEYS)})"
        )
    grid = data.get("grid") or {}
    cells = data.get("cells") or []
    if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
        raise ValueError(f"sweep file {str(path)!r}: grid must map each key to a list of values")
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise ValueError(f"sweep file {str(path)!r}: cells must be a list of mappings")
    return data


def expand(grid: list[tuple[str, list[Any]]], cells: list[dict[str, Any]]) -> list[dict]:
    """Every explicit cell combined with every point of the grid (product of its lists)."""
    keys = [k for k, _ in grid]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"--grid names {repeated[0]!r} twice: give its values in one list")
    for key, values in grid:
        if not values:
            raise ValueError(f"grid {key!r} has no values")
    points = [
        dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(v for _, v in grid))
    ]
    explicit = [{canonical_key(k, "cells"): v for k, v in c.items()} for c in cells] or [{}]
    return [{**c, **p} for c in explicit for p in points]


def cell_name(values: dict[str, Any]) -> str:
    """A directory name from a cell's settings: allreduce_workers-2_seed-0."""
    if not values:
        return "base"
    parts = [
        plain(v)
        if k == "strategy.name"
        else f"{SHORT_KEYS.get(k, k.rsplit('.', 1)[-1])}-{plain(v)}"
        for k, v in values.items()
    ]
    name = re.sub(r"[^A-Za-z0-9._=-]+", "_", "_".join(parts)).strip("._") or "cell"
    if len(name) > 120:  # far below NAME_MAX, so the cell's own files fit beside it
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[:110]}-{digest}"
    assert len(name) < NAME_MAX
    return name


def plain(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def cell_config(base: dict[str, Any], values: dict[str, Any]) -> tuple[dict, set[str]]:
    """The base config with the cell's settings applied; base strategy keys the cell's
    strategy does not take are left out (returned, so the plan can tell a key no cell uses)."""
    from distlab.strategies import STRATEGIES, params_for

    data = copy.deepcopy(base)
    if isinstance(data.get("strategy"), str):
        data["strategy"] = {"name": data["strategy"]}
    for key, value in values.items():
        set_dotted(data, key, value)
    strategy = data.get("strategy") or {}
    dropped: set[str] = set()
    name = strategy.get("name", "centralized")
    if name in STRATEGIES:
        taken = params_for(name).model_fields
        own = {k.split(".", 1)[1] for k in values if k.startswith("strategy.")}
        dropped = {k for k in strategy if k not in taken and k not in own}
        data["strategy"] = {k: v for k, v in strategy.items() if k not in dropped}
    return data, {f"strategy.{k}" for k in dropped}


def plan_sweep(
    base: dict[str, Any],
    grid: list[str] | None = None,
    sweep: dict[str, Any] | None = None,
    name: str | None = None,
    out_dir: str | Path = "sweeps",
    jobs: int = 1,
    check_inputs: bool = True,
    repeats: int | None = None,
) -> SweepPlan:
    """Expand and validate every cell; ValueError (naming the cell) before anything runs.
    `base` is the config every cell starts from (a sweep file's `base` already merged in),
    `grid` the `--grid KEY=V1,V2` texts, `sweep` a sweep file's contents (its grid comes
    first, then `grid`; its cells are each combined with the grid).

    Timings are compared across cells, so every cell runs with the same torch threads per
    process unless `threads` is set: the count the cell with the most processes gets
    (cores // processes), one with several jobs at once. A one-process baseline with two
    threads against two one-thread workers would credit the threads to the workers.
    `repeats` (or the file's `repeats`) runs each cell that many times, interleaved (every
    cell once, then every cell again), as CELL_r1, CELL_r2, ...: the report gives the
    median and the spread, and a slow moment of the machine touches one repeat of each."""
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1 (got {jobs})")
    sweep = sweep or {}
    repeats = check_repeats(repeats if repeats is not None else sweep.get("repeats", 1))
    grids = [(canonical_key(k, "grid"), v) for k, v in (sweep.get("grid") or {}).items()]
    grids += [parse_grid(g) for g in grid or []]
    name = name or sweep.get("name") or "sweep"
    check_name(name)
    root = Path(out_dir) / name
    base = copy.deepcopy(base)
    if jobs > 1 and not base.get("threads"):
        base["threads"] = 1
    points = expand(grids, sweep.get("cells") or [])
    cells = build_cells(base, points, root)
    threads = even_threads(base, cells)
    if threads:
        base["threads"] = threads
        cells = build_cells(base, points, root)
    names = [c.name for c in cells]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:
        raise ValueError(f"the sweep has cell {twice!r} twice: its cells must differ")
    if check_inputs:
        check_cell_inputs(cells)
    if repeats > 1:
        cells = repeat_cells(cells, repeats, root)
    return SweepPlan(name, root, base, tuple(cells))


def check_repeats(repeats: Any) -> int:
    if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= MAX_REPEATS:
        raise ValueError(f"--repeats must be an integer from 1 to {MAX_REPEATS} (got {repeats!r})")
    return repeats


def build_cells(base: dict[str, Any], points: list[dict[str, Any]], root: Path) -> list[Cell]:
    """A validated Cell for each point of the grid; ValueError naming the cell, or a base
    strategy key that no cell's strategy takes."""
    cells, unused = [], None
    for values in points:
        label = cell_name(values)
        data, dropped = cell_config(base, values)
        unused = dropped if unused is None else unused & dropped
        data.update(out_dir=str(root), name=label)
        cfg = validate_cell(label, data)
        cells.append(Cell(label, values, json.loads(cfg.model_dump_json()), count_processes(cfg)))
    if unused:
        raise ValueError(f"{sorted(unused)[0]} is not a key of any strategy in the sweep")
    return cells


def even_threads(base: dict[str, Any], cells: list[Cell]) -> int | None:
    """The torch threads every cell gets when their process counts differ and nothing set
    the threads: cores // the most processes of any cell (at least 1); else None."""
    if base.get("threads") or len({c.processes for c in cells}) < 2:
        return None
    if any(c.config.get("threads") for c in cells):
        return None  # a cell that sets its own threads was set by hand: leave them all
    return max(1, (os.cpu_count() or 1) // max(c.processes for c in cells))


def repeat_cells(cells: list[Cell], repeats: int, root: Path) -> list[Cell]:
    """Each cell `repeats` times, interleaved: every cell's first run, then every second."""
    out = []
    for r in range(1, repeats + 1):
        for cell in cells:
            name = f"{cell.name}_r{r}"
            config = {**cell.config, "name": name, "out_dir": str(root)}
            out.append(Cell(name, cell.values, config, cell.processes, r))
    return out


def check_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or len(name) > 120:
        raise ValueError(
            f"--name {name!r} must be letters, digits, '.', '_' or '-' (a directory name)"
        )


def validate_cell(label: str, data: dict[str, Any]):
    try:
        return validate_config(data)
    except ValueError as exc:
        raise ValueError(f"cell {label}: {exc}") from None


def count_processes(cfg) -> int:
    from distlab.strategies import get_spec

    return get_spec(cfg.strategy.name).processes(cfg)


def check_cell_inputs(cells: list[Cell]) -> None:
    """What `distlab run` checks before its processes start, for every cell: the process
    count, the TensorBoard package when asked for, the dataset's presence and the model's
    fit to it."""
    from distlab.api import check_process_count
    from distlab.data.datasets import load_dataset
    from distlab.strategies import get_spec

    loaded: dict[tuple, Any] = {}
    for cell in cells:
        cfg = validate_config(cell.config)
        try:
            if cfg.tensorboard:
                from distlab.tensorboard import check_available

                check_available()
            check_process_count(cfg, cell.processes)
            key = (cfg.dataset, str(cfg.data_dir), cfg.download)
            if key not in loaded:
                loaded[key] = load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
            get_spec(cfg.strategy.name).check_data(cfg, loaded[key])
        except ValueError as exc:
            raise ValueError(f"cell {cell.name}: {exc}") from None


# --- running ---------------------------------------------------------------------------------


def cell_finished(plan: SweepPlan, cell: Cell) -> dict[str, Any] | None:
    """The summary of a completed cell, else None (missing, failed, stopped, half-written)."""
    path = plan.root / cell.name / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if summary.get("status") == "completed" else None


def prepare_root(plan: SweepPlan, overwrite: bool) -> None:
    """Create the sweep directory, or resume the same plan in it; another plan under the
    same name is refused unless `overwrite` (which starts the sweep again)."""
    record = plan.root / PLAN_FILE
    if record.exists() and not overwrite:
        try:
            old = json.loads(record.read_text()).get("cells_planned")
        except ValueError:
            old = None
        if old != plan.fingerprint():
            raise ValueError(
                f"sweep {str(plan.root)!r} exists with other cells: rerun the same command to "
                "resume it, or use another --name, or --overwrite to start it again"
            )
    elif plan.root.exists() and overwrite:
        import shutil

        shutil.rmtree(plan.root)
    elif plan.root.exists() and any(plan.root.iterdir()):
        raise ValueError(f"{str(plan.root)!r} exists and is not a sweep: use another --name")
    (plan.root / "cells").mkdir(parents=True, exist_ok=True)
    (plan.root / "logs").mkdir(exist_ok=True)
    for cell in plan.cells:
        (plan.root / "cells" / f"{cell.name}.json").write_text(json.dumps(cell.config, indent=2))


def write_record(plan: SweepPlan, results: dict[str, CellResult]) -> None:
    """sweep.json: the plan and each cell's outcome, rewritten atomically as cells end."""
    cells = []
    for cell in plan.cells:
        done = results.get(cell.name)
        cells.append(
            {
                "name": cell.name,
                "values": cell.values,
                "status": done.status if done else "pending",
                "seconds": done.seconds if done else None,
                "error": done.error if done else None,
            }
        )
    record = {
        "name": plan.name,
        "base": plan.base,
        "cells": cells,
        "cells_planned": plan.fingerprint(),
    }
    tmp = plan.root / (PLAN_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, plan.root / PLAN_FILE)


def run_sweep(
    plan: SweepPlan,
    jobs: int = 1,
    overwrite: bool = False,
    on_cell: Callable[[str, Cell, CellResult | None], None] | None = None,
) -> list[CellResult]:
    """Run the cells not yet finished; returns every cell's result in plan order.
    `on_cell(kind, cell, result)` is told "start", "end" and "skip". Ctrl-C raises
    RunInterrupted and SIGTERM RunTerminated once every cell process has stopped; the
    cells that finished stay finished."""
    prepare_root(plan, overwrite)
    notify = on_cell or (lambda *_: None)
    results: dict[str, CellResult] = {}
    pending = []
    for cell in plan.cells:
        summary = cell_finished(plan, cell)
        if summary is None:
            pending.append(cell)
            continue
        results[cell.name] = CellResult(
            cell, "completed", summary.get("wall_seconds"), summary=summary, skipped=True
        )
        notify("skip", cell, results[cell.name])
    write_record(plan, results)
    running: dict[str, tuple[Cell, subprocess.Popen, float]] = {}
    try:
        with sigterm_raises():
            schedule(plan, pending, running, results, jobs, notify)
    except (KeyboardInterrupt, Terminated) as exc:
        terminated = isinstance(exc, Terminated)
        stop_cells(running, signal.SIGTERM if terminated else signal.SIGINT)
        for cell, proc, started in running.values():
            results[cell.name] = collect(plan, cell, proc, started)
        write_record(plan, results)
        finished = sum(r.status == "completed" for r in results.values())
        word = "terminated" if terminated else "interrupted"
        message = (
            f"sweep {plan.name} {word}: {finished} of {len(plan.cells)} cells finished; rerun "
            "the same command to resume"
        )
        raise (RunTerminated if terminated else RunInterrupted)(message) from None
    return [results[c.name] for c in plan.cells]


def schedule(plan, pending, running, results, jobs, notify) -> None:
    """Start cells while a job slot and the cores allow (a cell alone always may), collect
    them as they end."""
    cores = os.cpu_count() or 1
    oversubscribe = any(c.config.get("oversubscribe") for c in plan.cells)
    queue = list(pending)
    while queue or running:
        busy = sum(c.processes for c, _, _ in running.values())
        while queue and len(running) < jobs:
            cell = queue[0]
            if running and busy + cell.processes > cores and not oversubscribe:
                break
            queue.pop(0)
            running[cell.name] = (cell, start_cell(plan, cell), time.monotonic())
            busy += cell.processes
            notify("start", cell, None)
        for name, (cell, proc, started) in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                results[name] = collect(plan, cell, proc, started)
                write_record(plan, results)
                notify("end", cell, results[name])
        time.sleep(0.1)


def start_cell(plan: SweepPlan, cell: Cell) -> subprocess.Popen:
    """`distlab run` on the cell's config, its stderr kept in logs/<cell>.log."""
    cmd = [sys.executable, "-m", "distlab", "run", "--quiet", "--overwrite"]
    cmd += ["--config", str(plan.root / "cells" / f"{cell.name}.json")]
    with open(plan.root / "logs" / f"{cell.name}.log", "w") as log:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            # Its own session: Ctrl-C reaches the sweep alone, which stops each cell once.
            start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip


def die_with_parent() -> None:
    """The kernel sends this cell SIGTERM when the sweep dies, so a killed sweep leaves no run
    behind (the cell records itself as terminated and stops its ranks)."""
    set_parent_death_signal(signal.SIGTERM)


def collect(plan: SweepPlan, cell: Cell, proc: subprocess.Popen, started: float) -> CellResult:
    """The cell's outcome from its summary.json, or its last error line when it wrote none."""
    seconds = round(time.monotonic() - started, 3)
    path = plan.root / cell.name / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        summary = {}
    status = summary.get("status") or ("completed" if proc.returncode == 0 else "failed")
    if status == "completed" and proc.returncode != 0:
        status = "failed"
    error = summary.get("error") or (last_error(plan, cell) if status != "completed" else None)
    return CellResult(cell, status, seconds, error, summary)


def last_error(plan: SweepPlan, cell: Cell) -> str | None:
    try:
        lines = (plan.root / "logs" / f"{cell.name}.log").read_text().splitlines()
    except OSError:
        return None
    said = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return said[-1] if said else (lines[-1] if lines else None)


def stop_cells(running: dict, signum: int) -> None:
    """Stop every running cell as a user would (SIGINT or SIGTERM), then kill what is left
    after the grace period."""
    for _, proc, _ in running.values():
        if proc.poll() is None:
            try:
                proc.send_signal(signum)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for _, proc, _ in running.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def failure_message(plan: SweepPlan, results: list[CellResult]) -> str | None:
    failed = [r for r in results if r.status != "completed"]
    if not failed:
        return None
    first = failed[0]
    return (
        f"sweep {plan.name}: {len(failed)} of {len(results)} cells failed "
        f"(first: {first.cell.name}: {first.error or first.status})"
    )


def raise_for_failures(plan: SweepPlan, results: list[CellResult]) -> None:
    message = failure_message(plan, results)
    if message:
        raise RunFailed(message)
