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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from distlab.config import (
    FLAG_KEYS,
    NAME_MAX,
    config_field,
    read_config_file,
    set_dotted,
)
from distlab.runs.child import RunChild, RunOutcome, read_summary, stopping
from distlab.runs.directory import sweep_file

# Keys the sweep sets itself: each cell's run directory is SWEEP_DIR/<cell>.
RESERVED_KEYS = ("name", "out_dir")
# Short names of dotted keys in cell names: allreduce_workers-2_lr-0.1 (a strategy by its
# name alone).
SHORT_KEYS = {v: k for k, v in FLAG_KEYS.items()}
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
    node: str | None = None  # the Ray node that ran it (sweeps on a cluster)


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
    from distlab.api import strategy_keys

    data = copy.deepcopy(base)
    if isinstance(data.get("strategy"), str):
        data["strategy"] = {"name": data["strategy"]}
    for key, value in values.items():
        set_dotted(data, key, value)
    strategy = data.get("strategy") or {}
    dropped: set[str] = set()
    taken = strategy_keys(strategy.get("name", "centralized"))
    if taken is not None:
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
    checked = check_cells(base, expand(grids, sweep.get("cells") or []), root, check_inputs)
    threads = even_threads(base, checked)
    if threads:
        base["threads"] = threads
    cells = [make_cell(values, cfg, processes, threads) for values, cfg, processes in checked]
    if repeats > 1:
        cells = repeat_cells(cells, repeats, root)
    return SweepPlan(name, root, base, tuple(cells))


def check_repeats(repeats: Any) -> int:
    if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= MAX_REPEATS:
        raise ValueError(f"--repeats must be an integer from 1 to {MAX_REPEATS} (got {repeats!r})")
    return repeats


def check_cells(
    base: dict[str, Any], points: list[dict[str, Any]], root: Path, inputs: bool
) -> list[tuple[dict[str, Any], Any, int]]:
    """(settings, validated config, processes) for each point of the grid, every config
    checked once by `api.preflight` (with `inputs`, as `distlab run` checks before its
    processes start); ValueError naming the cell, a cell named twice, or a base strategy
    key that no cell's strategy takes."""
    from distlab.api import preflight

    configs, unused = {}, None
    for values in points:
        name = cell_name(values)
        if f"cell {name}" in configs:
            raise ValueError(f"the sweep has cell {name!r} twice: its cells must differ")
        data, dropped = cell_config(base, values)
        unused = dropped if unused is None else unused & dropped
        configs[f"cell {name}"] = {**data, "out_dir": str(root), "name": name}
    if unused:
        raise ValueError(f"{sorted(unused)[0]} is not a key of any strategy in the sweep")
    checked = preflight(configs, inputs)
    return [(v, c.config, c.processes) for v, c in zip(points, checked.values(), strict=True)]


def make_cell(values: dict[str, Any], cfg, processes: int, threads: int | None) -> Cell:
    """The cell of a checked config, with the sweep's even threads where it has them."""
    if threads:
        cfg = cfg.model_copy(update={"threads": threads})
    return Cell(cfg.name, values, json.loads(cfg.model_dump_json()), processes)


def even_threads(base: dict[str, Any], checked: list[tuple[dict, Any, int]]) -> int | None:
    """The torch threads every cell gets when their process counts differ and nothing set
    the threads: cores // the most processes of any cell (at least 1); else None."""
    processes = [p for _, _, p in checked]
    if base.get("threads") or len(set(processes)) < 2:
        return None
    if any(cfg.threads for _, cfg, _ in checked):
        return None  # a cell that sets its own threads was set by hand: leave them all
    return max(1, (os.cpu_count() or 1) // max(processes))


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


# --- running ---------------------------------------------------------------------------------


def cell_finished(plan: SweepPlan, cell: Cell) -> dict[str, Any] | None:
    """The summary of a completed cell, else None (missing, failed, stopped, half-written)."""
    summary = read_summary(plan.root / cell.name)
    return summary if summary.get("status") == "completed" else None


def prepare_root(plan: SweepPlan, overwrite: bool) -> None:
    """Create the sweep directory, or resume the same plan in it; another plan under the
    same name is refused unless `overwrite` (which starts the sweep again)."""
    record = sweep_file(plan.root)
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
    """The sweep's record: the plan and each cell's outcome, rewritten atomically as cells
    end."""
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
            | ({"node": done.node} if done and done.node else {})
        )
    record = {
        "name": plan.name,
        "base": plan.base,
        "cells": cells,
        "cells_planned": plan.fingerprint(),
    }
    path = sweep_file(plan.root)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def run_sweep(
    plan: SweepPlan,
    jobs: int = 1,
    overwrite: bool = False,
    on_cell: Callable[[str, Cell, CellResult | None], None] | None = None,
    address: str | None = None,
) -> list[CellResult]:
    """Run the cells not yet finished (as Ray tasks on the cluster at `address`, where
    given: tune/remote.py); returns every cell's result in plan order.
    `on_cell(kind, cell, result)` is told "start", "end" and "skip". Ctrl-C raises
    RunInterrupted and SIGTERM RunTerminated once every cell process has stopped; the
    cells that finished stay finished."""
    from distlab.experiments.tune.remote import joined

    with joined(plan, address):
        return sweep_cells(plan, jobs, overwrite, on_cell, address)


def sweep_cells(plan, jobs, overwrite, on_cell, address) -> list[CellResult]:
    from distlab.api import RunInterrupted, RunTerminated, Terminated
    from distlab.experiments.tune.remote import run_cells

    prepare_root(plan, overwrite)
    notify = on_cell or (lambda *_: None)
    results = finished_cells(plan, notify)
    write_record(plan, results)
    pending = [c for c in plan.cells if c.name not in results]
    running: dict[str, tuple[Cell, RunChild]] = {}
    try:
        with stopping(lambda: [child for _, child in running.values()]):
            if address is None:
                schedule(plan, pending, running, results, jobs, notify)
            else:
                end = partial(end_cell, plan, results, notify)
                run_cells(plan, pending, end, lambda cell: notify("start", cell, None))
    except (KeyboardInterrupt, Terminated) as exc:
        for cell, child in running.values():
            results[cell.name] = cell_result(cell, child.outcome())
        write_record(plan, results)
        finished = sum(r.status == "completed" for r in results.values())
        terminated = isinstance(exc, Terminated)
        word = "terminated" if terminated else "interrupted"
        message = (
            f"sweep {plan.name} {word}: {finished} of {len(plan.cells)} cells finished; rerun "
            "the same command to resume"
        )
        raise (RunTerminated if terminated else RunInterrupted)(message) from None
    return [results[c.name] for c in plan.cells]


def finished_cells(plan: SweepPlan, notify) -> dict[str, CellResult]:
    """The cells an earlier run of the sweep completed, each told as skipped."""
    results = {}
    for cell in plan.cells:
        summary = cell_finished(plan, cell)
        if summary is not None:
            results[cell.name] = CellResult(
                cell, "completed", summary.get("wall_seconds"), summary=summary, skipped=True
            )
            notify("skip", cell, results[cell.name])
    return results


def schedule(plan, pending, running, results, jobs, notify) -> None:
    """Start cells while a job slot and the cores allow (a cell alone always may), collect
    them as they end."""
    cores = os.cpu_count() or 1
    oversubscribe = any(c.config.get("oversubscribe") for c in plan.cells)
    queue = list(pending)
    while queue or running:
        busy = sum(c.processes for c, _ in running.values())
        while queue and len(running) < jobs:
            cell = queue[0]
            if running and busy + cell.processes > cores and not oversubscribe:
                break
            queue.pop(0)
            running[cell.name] = (cell, start_cell(plan, cell))
            busy += cell.processes
            notify("start", cell, None)
        for name, (cell, child) in list(running.items()):
            if not child.running():
                del running[name]
                end_cell(plan, results, notify, cell, child.outcome())
        time.sleep(0.1)


def end_cell(plan, results, notify, cell: Cell, outcome: RunOutcome, node=None) -> None:
    """An ended cell in the sweep's record (with the Ray node that ran it, if any), told."""
    results[cell.name] = cell_result(cell, outcome)
    results[cell.name].node = node
    write_record(plan, results)
    notify("end", cell, results[cell.name])


def start_cell(plan: SweepPlan, cell: Cell) -> RunChild:
    """`distlab run` on the cell's config into SWEEP_DIR/<cell>, its stderr kept in
    logs/<cell>.log."""
    config = plan.root / "cells" / f"{cell.name}.json"
    log = plan.root / "logs" / f"{cell.name}.log"
    return RunChild.start(config, plan.root / cell.name, log, overwrite=True)


def cell_result(cell: Cell, outcome: RunOutcome) -> CellResult:
    return CellResult(cell, outcome.status, outcome.seconds, outcome.error, outcome.summary)


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
    from distlab.api import RunFailed

    message = failure_message(plan, results)
    if message:
        raise RunFailed(message)
