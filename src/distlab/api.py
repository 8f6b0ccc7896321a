"""The Python face of distlab: run(config) -> RunResult, load_run(path).

`run` validates the config, resolves the strategy's spec once, checks everything that can be
checked before a process starts, prepares the run directory and hands a `Job` to a launcher;
whatever the outcome, it merges the events and writes summary.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import distlab.drawer as drawer
from distlab.config import RunConfig, config_data, validate_config
from distlab.data.datasets import load_dataset
from distlab.resume import (
    elastic_run,
    mark_elastic,
    reopen_run_dir,
    restart_from_scratch,
    resumable_run,
)
from distlab.runs.directory import (
    RunResult,
    load_run,
    prepare_run_dir,
    write_json,
    write_partition_json,
    write_partition_plot,
)
from distlab.runs.events import merge_events
from distlab.runtime import launch
from distlab.runtime.environ import elastic_restart
from distlab.runtime.failures import blame_fault, forget_fault
from distlab.strategies import StrategySpec, get_spec, spec_ref
from distlab.summary import summarize
from distlab.tensorboard import TensorBoardLog

__all__ = ["RunConfig", "RunResult", "load_run", "run", "prepare_run_dir"]


def run(
    config: RunConfig | dict[str, Any] | None = None,
    overwrite: bool = False,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    started: float | None = None,
    resume: str | Path | None = None,
) -> RunResult:
    """Validate, launch and summarize one run. Bad input raises ValueError before anything
    is written; a failed rank raises launch.RunFailed after the run directory is finalized;
    Ctrl-C and SIGTERM raise launch.RunInterrupted and launch.RunTerminated after it is.
    `on_event` gets the lead rank's events and {"kind": "status", "text": ...} lines while
    the run starts. `started` (epoch seconds) is when the run was asked for, the origin of
    wall and start-up seconds: the command's launch for the CLI, this call by default.
    With cfg.tensorboard the process that speaks for the run also writes those events,
    then the summary, as TensorBoard scalars.

    `resume` (a run directory) continues that run from its newest complete checkpoint, in
    the same directory; `config`, when given, must equal the run's own but for keys that do
    not change the result (RESUME_FREE_KEYS)."""
    launch.refuse_worker_import()
    resumed = None if resume is None else resumable_run(Path(resume), config)
    if resumed is not None:
        config = resumed.config
    if config is None:
        raise ValueError("run needs a config (or resume=RUN_DIR)")
    # A RunConfig built directly skipped the strategy's cross-field checks: validate again.
    cfg = validate_config(config_data(config))
    spec = get_spec(cfg.strategy.name)
    launch.check_launcher(spec.launcher_for(cfg))
    start = time.time() if started is None else started
    external = launch.external_env()
    world = spec.processes(cfg)
    if external is not None and external[1] != world:
        raise ValueError(
            f"the launcher started {external[1]} processes but strategy "
            f"{cfg.strategy.name} with --workers {cfg.workers} needs {world}"
        )
    if external is None:
        check_process_count(cfg, world)
    board = open_board(cfg, spec, start, external)
    on_event = board.tee(on_event) if board else on_event
    launch.resolve_device(cfg)
    launch.notify(on_event if _leads(external) else None, "loading data")
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
    spec.check_data(cfg, data)
    spec.check_schedule(cfg, data)
    # Partitioning can refuse the config (more clients than samples): before any writing.
    split = spec.data_partition(cfg, data.y_train.cpu().numpy())
    if split is not None:
        split = dataclasses.replace(split, holder=spec.part_holder)
    if external is None:
        warn_oversubscribed(world)
    job = make_job(cfg, spec, world)
    if external is not None:
        return _run_external(
            cfg, spec, job, external, overwrite, start, data, split, on_event, board, resumed
        )
    launcher = launch.local_launcher(spec.launcher_for(cfg), job)
    if resumed is not None:
        checkpoint = resumed.checkpoint_for(job.world)
        run_dir = reopen_run_dir(resumed.run_dir, checkpoint, board)
        rearm_fault(cfg, run_dir)
        start -= checkpoint.seconds(job.lead)  # wall seconds count the run's earlier life
    else:
        run_dir = prepare(cfg, overwrite, split, board)
    return _run_local(cfg, spec, job, launcher, run_dir, start, data, on_event, board)


def open_board(cfg: RunConfig, spec: StrategySpec, start: float, external) -> TensorBoardLog | None:
    """The TensorBoard writer, when asked for and this process speaks for the run (the
    parent, or rank 0 under a launcher); a missing package is refused here, before the run."""
    if not cfg.tensorboard or not _leads(external):
        return None
    return TensorBoardLog(start=start, lead=spec.lead(cfg))


def prepare(cfg: RunConfig, overwrite: bool, split, board: TensorBoardLog | None) -> Path:
    """Make the run directory: config, TensorBoard files, partition record (last: a run
    directory with partition.json is one that finish_run completes, plot included)."""
    run_dir = prepare_run_dir(cfg, overwrite)
    if board is not None:
        board.open(run_dir)
    record_partition(run_dir, split)
    return run_dir


def rearm_fault(cfg: RunConfig, run_dir: Path) -> None:
    """A resumed run that still has a fault (given again, or one that had not fired) may
    fire it; without one, the record of the fault that fired stays."""
    if cfg.fault is not None:
        forget_fault(run_dir)


def make_job(cfg: RunConfig, spec: StrategySpec, world: int) -> launch.Job:
    """What the launcher runs: the spec by reference (each process imports it), each rank's
    role and the lead rank."""
    roles = tuple(spec.role(cfg, rank) for rank in range(world))
    return launch.Job(spec_ref(spec.name), roles, spec.lead(cfg))


# More local processes than this many per core is almost surely a typo (--workers 5000).
OVERSUBSCRIBE_FACTOR = 4


def check_process_count(cfg: RunConfig, world: int) -> None:
    """Refuse far more local processes than cores unless asked for."""
    cores = os.cpu_count() or 1
    if world > OVERSUBSCRIBE_FACTOR * cores and not cfg.oversubscribe:
        raise ValueError(
            f"{world} processes on {cores} cores is more than {OVERSUBSCRIBE_FACTOR} per core; "
            "lower --workers, or --set oversubscribe=true to run them anyway"
        )


def warn_oversubscribed(world: int) -> None:
    """More processes than cores: said once every check has passed, so bad input still gets
    its one line alone."""
    cores = os.cpu_count() or 1
    if world > cores:
        warnings.warn(
            f"{world} processes share {cores} cores: timings will not show the speedup "
            "of separate cores",
            OversubscribeWarning,
            stacklevel=3,
        )


class OversubscribeWarning(UserWarning):
    """More processes than cores: the run works, its timings mislead."""


def record_partition(run_dir: Path, split) -> None:
    """partition.json, for every run whose data is divided among workers. Its plot is drawn
    by the command's drawer meanwhile, or by finish_run once training is over, so that
    matplotlib never delays the first step."""
    if split is not None and len(split.indices) > 1:
        write_partition_json(run_dir, split)
        drawer.submit(run_dir)


def draw_partition(run_dir: Path) -> None:
    """partition.png from partition.json, whatever the run's outcome: the drawer's, else
    drawn here. The record is the JSON: a plot that cannot be drawn is a warning, never a
    lost summary or a hidden failure."""
    try:
        answer = drawer.collect(run_dir)
        if answer is None:
            write_partition_plot(run_dir)
        elif answer:
            raise ValueError(answer)
    except (ValueError, OSError) as exc:
        warnings.warn(f"partition.png not written: {exc}", stacklevel=2)


def _run_local(cfg, spec, job, launcher, run_dir, start, data, on_event, board) -> RunResult:
    status, failure = "failed", None
    with launch.sigterm_raises():
        try:
            launcher(cfg, job, run_dir, start, data, on_event)
            status = "completed"
        except launch.RunFailed as exc:
            failure = blame_fault(exc, run_dir, cfg.fault, 0)
            if failure is exc:
                raise
            raise failure from exc
        except (KeyboardInterrupt, launch.Terminated, launch.RunInterrupted) as exc:
            stopped = launch.stopped_error(exc, run_dir)
            status = stopped.status
            raise stopped from None
        except launch.MainNotGuarded:
            status = None  # no run took place: leave nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        finally:
            launch.hold_sigterm()
            if status is not None:
                finish_run(cfg, spec, run_dir, job.world, start, status, failure, board)
            elif board is not None:
                board.close()
    return load_run(run_dir)


def _leads(external: tuple[int, int, int] | None) -> bool:
    """Whether this process speaks for the run (prints, reports status): rank 0 of a
    launcher-started run, or the only caller of a local one."""
    return external is None or external[0] == 0


def _run_external(
    cfg, spec, job, external, overwrite, start, data, split, on_event, board, resumed
) -> RunResult:
    rank, world, local_rank = external
    clock = {"start": start}
    recorded: dict[str, launch.RunFailed] = {}  # the failure rank 0 wrote into the summary

    def prepare_dir() -> Path:
        """Rank 0: a new run directory, or the run this one goes on with: --resume, or
        the run torchrun restarted (its newest checkpoint, or its start)."""
        if resumed is None and elastic_restart() == 0:
            run_dir = prepare(cfg, overwrite, split, board)
            mark_elastic(run_dir)
            return run_dir
        found = resumed or elastic_run(cfg)
        if found is None:
            raise ValueError(
                "torchrun restarted the run, but its run directory was not found in "
                f"{str(cfg.out_dir)!r}"
            )
        checkpoint = resumed.checkpoint_for(world) if resumed else found.latest_checkpoint(world)
        if checkpoint is None:  # stopped before its first checkpoint: from the start
            return restart_from_scratch(found.run_dir, board)
        clock["start"] = start - checkpoint.seconds(job.lead)
        run_dir = reopen_run_dir(found.run_dir, checkpoint, board)
        if resumed is not None and elastic_restart() == 0:  # --resume, not a restart of it
            rearm_fault(cfg, run_dir)
        return run_dir

    def finish(run_dir: Path, status: str, failure: launch.RunFailed | None) -> None:
        if failure is not None:  # the run's outcome, its message naming a fault that fired
            failure = recorded["failure"] = blame_fault(
                failure, run_dir, cfg.fault, elastic_restart()
            )
        finish_run(cfg, spec, run_dir, world, clock["start"], status, failure, board)

    with launch.sigterm_raises(ignore_after_error=_leads(external)):
        try:
            run_dir = launch.join_external(
                cfg,
                job,
                rank,
                local_rank,
                prepare_dir,
                finish,
                start,
                data,
                on_event if _leads(external) else None,
            )
        except launch.RunFailed as exc:
            blamed = recorded.get("failure", exc)  # rank 0 raises what it recorded
            if blamed is exc:
                raise
            raise blamed from exc
    if _leads(external):
        return load_run(run_dir)
    # rank 0 holds the record: this rank's result has no summary or events
    return RunResult(run_dir, {}, [], json.loads(cfg.to_json()))


def finish_run(
    cfg: RunConfig,
    spec: StrategySpec,
    run_dir: Path,
    world: int,
    start: float,
    status: str,
    failure: launch.RunFailed | None = None,
    board: TensorBoardLog | None = None,
) -> None:
    """Merge the ranks' events and write summary.json, whatever the run's outcome. A failed
    run's `error` is the one-line cause (the rank that caused it); `rank_errors` keeps what
    each rank reported, its peers' connection errors included. `board` gets what it missed
    of the lead's events and the summary, and is closed. partition.png is drawn once
    summary.json is written: a second Ctrl-C while it draws costs the figure, not the record."""
    files = sorted((run_dir / "events").glob("rank-*.jsonl"))
    events = merge_events(files, run_dir / "events.jsonl")
    summary = summarize(cfg, spec, events, world, time.time() - start, status, run_dir)
    if failure is not None:
        summary["error"] = str(failure)
        summary["rank_errors"] = [
            {"rank": rank, "message": message}
            for rank, message in sorted(failure.rank_errors.items())
        ]
    write_json(run_dir / "summary.json", summary)
    draw_partition(run_dir)
    if board is not None:
        board.finish(events, summary)


def strategy_names() -> list[str]:
    """The names --strategy takes, sorted."""
    from distlab.strategies import STRATEGIES

    return sorted(STRATEGIES)


def network_model(strategy: str | None) -> tuple[str | None, str]:
    """How the what-if network model prices this strategy's exchanges (a pattern name), or
    None and the reason it cannot."""
    from distlab.strategies import STRATEGIES

    if strategy not in STRATEGIES:
        return None, f"no network model for strategy {strategy!r}"
    return get_spec(strategy).network_model()


def summary_rows(strategy: str | None) -> list[tuple[str, str]]:
    """(label, summary key) for each row of a run's table: the shared rows and the
    strategy's own; for an unknown strategy, the shared ones."""
    from distlab.strategies import STRATEGIES
    from distlab.summary import LAST_ROWS, SHARED_ROWS, table_rows

    if strategy not in STRATEGIES:
        return [*SHARED_ROWS, *LAST_ROWS]
    return table_rows(get_spec(strategy))
