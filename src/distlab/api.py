"""The Python face of distlab: run(config) -> RunResult, load_run(path).

`run` is a run of named steps: validate the config, resolve what the run needs into one
`LaunchPlan` (the strategy's spec, the job, the data, the partition, every check that can be
made before a process starts), prepare the run directory, launch, and summarize: whatever
the outcome, the events are merged and summary.json written.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import distlab.drawer as drawer
from distlab.config import RunConfig, check_run, config_data, validate_config
from distlab.data.datasets import load_dataset
from distlab.resume import (
    ResumableRun,
    elastic_run,
    mark_elastic,
    reopen_run_dir,
    restart_from_scratch,
    resumable_run,
)
from distlab.runs.directory import (
    RunPaths,
    RunResult,
    load_run,
    prepare_run_dir,
    write_json,
)
from distlab.runs.events import EventTail, merge_events
from distlab.runtime import launch, network
from distlab.runtime.environ import elastic_restart
from distlab.runtime.failures import (
    RunFailed,
    RunInterrupted,
    RunTerminated,
    Terminated,
    blame_fault,
    forget_fault,
)
from distlab.runtime.launch import check_process_count
from distlab.strategies import StrategySpec, get_spec, spec_ref
from distlab.summary import summarize
from distlab.tensorboard import TensorBoardLog

if TYPE_CHECKING:
    from distlab.data.datasets import Dataset
    from distlab.data.partition import Partition

__all__ = [
    "RunConfig",
    "RunFailed",
    "RunInterrupted",
    "RunResult",
    "RunTerminated",
    "Terminated",
    "load_run",
    "preflight",
    "prepare_run_dir",
    "run",
]


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
    cfg = validated(resumed.config if resumed is not None else config)
    plan = resolve(cfg, resumed, overwrite, on_event, started)
    if plan.external is not None:
        return launch_external(plan)
    launcher = launch.local_launcher(plan.spec.launcher_for(cfg), plan.job)
    prepare_directory(plan)
    return launch_local(plan, launcher)


@dataclasses.dataclass
class LaunchPlan:
    """Everything one run's launch needs, resolved once before anything is written. The
    step that prepares the run directory sets `paths` (and moves `start` back by a resumed
    run's earlier life); rank 0 of a launcher-started run keeps the `failure` it recorded."""

    cfg: RunConfig
    spec: StrategySpec
    job: launch.Job
    start: float
    """The run's clock origin (epoch seconds): wall and start-up seconds count from it."""
    external: tuple[int, int, int] | None
    """(rank, world, local rank) when a launcher (torchrun, mpirun, Slurm) started this
    process; None when this process starts the run's processes itself."""
    data: Dataset
    split: Partition | None
    on_event: Callable | None
    board: TensorBoardLog | None
    resumed: ResumableRun | None
    overwrite: bool
    paths: RunPaths | None = None
    failure: RunFailed | None = None

    def settle(self, run_dir: Path) -> RunPaths:
        """The run directory is prepared: its paths, from now on the plan's."""
        self.paths = RunPaths(run_dir)
        return self.paths

    @property
    def leads(self) -> bool:
        """Whether this process speaks for the run (prints, reports status): rank 0 of a
        launcher-started run, or the only caller of a local one."""
        return self.external is None or self.external[0] == 0


def validated(config: RunConfig | Mapping[str, Any] | None) -> RunConfig:
    """The run's config, parsed once: a mapping is validated; a RunConfig built directly
    has had pydantic's checks, and gets the checks across fields here."""
    if config is None:
        raise ValueError("run needs a config (or resume=RUN_DIR)")
    if isinstance(config, RunConfig):
        return check_run(config)
    return validate_config(config_data(config))


def resolve(
    cfg: RunConfig,
    resumed: ResumableRun | None,
    overwrite: bool,
    on_event: Callable | None,
    started: float | None,
) -> LaunchPlan:
    """Everything the launch needs, each check made before anything is written: the spec
    and its launcher, the process count, the TensorBoard writer, the device, the data and
    its partition (which can refuse the config: more clients than samples)."""
    spec = get_spec(cfg.strategy.name)
    launch.check_launcher(spec.launcher_for(cfg))
    network.check_interface(cfg.network.interface)
    start = time.time() if started is None else started
    external = launch.external_env()
    world = spec.processes(cfg)
    check_world(cfg, world, external)
    board = open_board(cfg, spec, start, external)
    on_event = board.tee(on_event) if board else on_event
    launch.resolve_device(cfg)
    leads = external is None or external[0] == 0
    launch.notify(on_event if leads else None, "loading data")
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
    spec.check_data(cfg, data)
    spec.check_schedule(cfg, data)
    split = spec.data_partition(cfg, data.y_train.cpu().numpy())
    if split is not None:
        split = dataclasses.replace(split, holder=spec.part_holder)
    if external is None:
        launch.warn_oversubscribed(world, stacklevel=3)  # the caller of run
    job = make_job(cfg, spec, world, split)
    return LaunchPlan(
        cfg, spec, job, start, external, data, split, on_event, board, resumed, overwrite
    )


def check_world(cfg: RunConfig, world: int, external: tuple[int, int, int] | None) -> None:
    """The processes a launcher started must be the run's; local ones must fit the cores."""
    if external is None:
        launch.check_process_count(cfg, world)
    elif external[1] != world:
        raise ValueError(
            f"the launcher started {external[1]} processes but strategy "
            f"{cfg.strategy.name} with --workers {cfg.workers} needs {world}"
        )


def open_board(cfg: RunConfig, spec: StrategySpec, start: float, external) -> TensorBoardLog | None:
    """The TensorBoard writer, when asked for and this process speaks for the run (the
    parent, or rank 0 under a launcher); a missing package is refused here, before the run."""
    if not cfg.tensorboard or (external is not None and external[0] != 0):
        return None
    return TensorBoardLog(start=start, lead=spec.lead(cfg))


def make_job(
    cfg: RunConfig, spec: StrategySpec, world: int, split: Partition | None = None
) -> launch.Job:
    """What the launcher runs: the spec by reference (each process imports it), each rank's
    role, the lead rank, the run directory's layout and the partition every rank is handed."""
    roles = tuple(spec.role(cfg, rank) for rank in range(world))
    return launch.Job(spec_ref(spec.name), roles, spec.lead(cfg), RunPaths, split)


def prepare_directory(plan: LaunchPlan) -> RunPaths:
    """A new run directory, or the resumed run's, reopened at its newest checkpoint."""
    if plan.resumed is None:
        run_dir = prepare(plan.cfg, plan.overwrite, plan.split, plan.board)
    else:
        checkpoint = plan.resumed.checkpoint_for(plan.job.world)
        run_dir = reopen_run_dir(plan.resumed.run_dir, checkpoint, plan.board)
        rearm_fault(plan.cfg, run_dir)
        plan.start -= checkpoint.seconds(plan.job.lead)  # wall seconds count its earlier life
    return plan.settle(run_dir)


def prepare(cfg: RunConfig, overwrite: bool, split, board: TensorBoardLog | None) -> Path:
    """Make the run directory: config, TensorBoard files, partition record (last: a run
    directory with partition.json is one that finish_run completes, plot included)."""
    run_dir = prepare_run_dir(cfg, overwrite)
    if board is not None:
        board.open(run_dir)
    drawer.record_partition(run_dir, split)
    return run_dir


def rearm_fault(cfg: RunConfig, run_dir: Path) -> None:
    """A resumed run that still has a fault (given again, or one that had not fired) may
    fire it; without one, the record of the fault that fired stays."""
    if cfg.fault is not None:
        forget_fault(RunPaths(run_dir).fault)


def follow_lead(plan: LaunchPlan, paths: RunPaths) -> Callable[[], None] | None:
    """What a launcher of local processes calls as they run: the lead rank's new events,
    passed on with a "training" line when training starts."""
    forward = launch.announce_training(plan.on_event)
    return None if forward is None else EventTail(paths.rank_events(plan.job.lead), forward).poll


def launch_local(plan: LaunchPlan, launcher: Callable) -> RunResult:
    """Start the run's processes on this machine and record the run whatever its outcome;
    a failure is raised naming the injected fault that caused it."""
    cfg, paths, status, failure = plan.cfg, plan.paths, "failed", None
    assert paths is not None
    follow = follow_lead(plan, paths)
    with launch.sigterm_raises():
        try:
            launcher(cfg, plan.job, paths.root, plan.start, plan.data, plan.on_event, follow)
            status = "completed"
        except launch.RunFailed as exc:
            failure = blame_fault(exc, paths.fault, cfg.fault, 0)
            if failure is exc:
                raise
            raise failure from exc
        except (KeyboardInterrupt, launch.Terminated, launch.RunInterrupted) as exc:
            stopped = launch.stopped_error(exc, paths.root)
            status = stopped.status
            raise stopped from None
        except launch.MainNotGuarded:
            status = None  # no run took place: leave nothing behind
            shutil.rmtree(paths.root, ignore_errors=True)
            raise
        finally:
            launch.hold_sigterm()
            if status is not None:
                summarize_run(plan, status, failure)
            elif plan.board is not None:
                plan.board.close()
    return load_run(paths.root)


def summarize_run(plan: LaunchPlan, status: str, failure: RunFailed | None) -> None:
    """The run's record, from the plan: merged events and summary.json."""
    assert plan.paths is not None
    world = plan.job.world
    finish_run(plan.cfg, plan.spec, plan.paths.root, world, plan.start, status, failure, plan.board)


def launch_external(plan: LaunchPlan) -> RunResult:
    """Join the processes a launcher started; rank 0 prepares the run directory and records
    the run. Rank 0 raises the failure it recorded, naming an injected fault that fired."""
    rank, _, local_rank = plan.external
    on_event = plan.on_event if plan.leads else None
    setup = launch.RankSetup(rank, None, plan.start, local_rank, plan.data, on_event)
    with launch.sigterm_raises(ignore_after_error=plan.leads):
        try:
            run_dir = launch.join_external(
                plan.cfg,
                plan.job,
                setup,
                lambda: prepare_external(plan).root,
                functools.partial(finish_external, plan),
            )
        except launch.RunFailed as exc:
            blamed = plan.failure or exc  # rank 0 raises what it recorded
            if blamed is exc:
                raise
            raise blamed from exc
    if plan.leads:
        return load_run(run_dir)
    # rank 0 holds the record: this rank's result has no summary or events
    return RunResult(run_dir, {}, [], json.loads(plan.cfg.to_json()))


def prepare_external(plan: LaunchPlan) -> RunPaths:
    """Rank 0: a new run directory, or the run this one goes on with: --resume, or the run
    torchrun restarted (from its newest checkpoint, or from its start)."""
    cfg, resumed, world = plan.cfg, plan.resumed, plan.job.world
    if resumed is None and elastic_restart() == 0:
        run_dir = prepare(cfg, plan.overwrite, plan.split, plan.board)
        mark_elastic(run_dir)
        return plan.settle(run_dir)
    found = resumed or elastic_run(cfg)
    if found is None:
        raise ValueError(
            "torchrun restarted the run, but its run directory was not found in "
            f"{str(cfg.out_dir)!r}"
        )
    checkpoint = resumed.checkpoint_for(world) if resumed else found.latest_checkpoint(world)
    if checkpoint is None:  # stopped before its first checkpoint: from the start
        return plan.settle(restart_from_scratch(found.run_dir, plan.board))
    plan.start -= checkpoint.seconds(plan.job.lead)  # wall seconds count its earlier life
    run_dir = reopen_run_dir(found.run_dir, checkpoint, plan.board)
    if resumed is not None and elastic_restart() == 0:  # --resume, not a restart of it
        rearm_fault(cfg, run_dir)
    return plan.settle(run_dir)


def finish_external(
    plan: LaunchPlan, paths: RunPaths, status: str, failure: RunFailed | None
) -> None:
    """Rank 0's record of the run; a failure's message names an injected fault that fired
    in this attempt, and is kept as the failure rank 0 raises."""
    if failure is not None:
        failure = plan.failure = blame_fault(
            failure, paths.fault, plan.cfg.fault, elastic_restart()
        )
    summarize_run(plan, status, failure)


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
    paths = RunPaths(Path(run_dir))
    events = merge_events(paths.rank_event_files(), paths.merged_events)
    summary = summarize(cfg, spec, events, world, time.time() - start, status, run_dir)
    if failure is not None:
        summary["error"] = str(failure)
        summary["rank_errors"] = [
            {"rank": rank, "message": message}
            for rank, message in sorted(failure.rank_errors.items())
        ]
    write_json(paths.summary, summary)
    drawer.draw_partition(run_dir)
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


@dataclasses.dataclass(frozen=True)
class CheckedConfig:
    """A config `preflight` passed: validated, with the processes its run starts."""

    config: RunConfig
    processes: int


def preflight(configs: Mapping[str, Any], inputs: bool = True) -> dict[str, CheckedConfig]:
    """Check many configs as `run` checks one, before any of them starts. Each config (a
    mapping or a RunConfig) is validated once and its process count taken; then, with
    `inputs`, each gets what `run` checks before its processes start: the TensorBoard
    package where asked for, the process count against this machine's cores, and the
    dataset (loaded once per distinct dataset) against the strategy's check. The keys are
    labels: a problem is a one-line ValueError 'LABEL: cause', every config validated
    before any input is checked."""
    checked = {label: preflight_config(label, config) for label, config in configs.items()}
    if inputs:
        loaded: dict[tuple, Any] = {}
        for label, item in checked.items():
            try:
                preflight_inputs(item, loaded)
            except ValueError as exc:
                raise ValueError(f"{label}: {exc}") from None
    return checked


def preflight_config(label: str, config: Any) -> CheckedConfig:
    try:
        cfg = validated(config)
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}") from None
    return CheckedConfig(cfg, process_count(cfg))


def preflight_inputs(item: CheckedConfig, loaded: dict[tuple, Any]) -> None:
    """One config's inputs; `loaded` keeps each dataset loaded so far."""
    cfg = item.config
    if cfg.tensorboard:
        from distlab.tensorboard import check_available

        check_available()
    check_process_count(cfg, item.processes)
    key = (cfg.dataset, str(cfg.data_dir), cfg.download)
    if key not in loaded:
        loaded[key] = load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
    get_spec(cfg.strategy.name).check_data(cfg, loaded[key])


def process_count(config: RunConfig) -> int:
    """The processes a validated config's run starts."""
    return get_spec(config.strategy.name).processes(config)


def strategy_keys(strategy: str) -> frozenset[str] | None:
    """The keys a strategy's parameters take (`period` of local-sgd); None for a name that
    is no strategy."""
    from distlab.strategies import STRATEGIES, params_for

    if strategy not in STRATEGIES:
        return None
    return frozenset(params_for(strategy).model_fields)


def summary_from_events(run_dir: str | Path, status: str) -> dict[str, Any]:
    """summary.json as a run would have written it, from the events its ranks wrote before
    it was killed (merged here). Its wall seconds died with it: null, as is every figure
    the events do not give (train seconds without the end of training, comm totals without
    the ranks' last word)."""
    from distlab.runs.directory import RunPaths, read_json

    paths = RunPaths(Path(run_dir))
    cfg = validate_config(read_json(paths.config))
    spec = get_spec(cfg.strategy.name)
    events = merge_events(paths.rank_event_files(), paths.merged_events)
    summary = summarize(cfg, spec, events, spec.processes(cfg), 0.0, status, paths.root)
    summary["wall_seconds"] = None
    summary["summary_from"] = "events: the run was killed before it wrote its summary"
    return summary
