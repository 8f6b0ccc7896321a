"""distlab runs as Ray Tune trials: `distlab tune --config base.yaml --space space.yaml`.

Each trial is the base config with the trial's parameters, run as a `distlab run` process
into OUT/trials/<trial>/ (a normal run directory), as a sweep runs its cells. The trial
follows the run's events as they are written and reports every eval to Tune, so ASHA
(Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning") can stop a bad
trial after its first evaluations; a stopped trial's run is stopped and keeps its record.
That run directory is the trial's record (records.py): every file of the search, and the
line printed for each trial, says what it says. A trial asks Ray for one CPU per process of
its run, so Ray never starts more processes than the cluster has cores. Everything is
checked before Ray starts; OUT also holds Ray's experiment state, which `--resume`
continues from.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from distlab.experiments.tune.records import (
    METRICS,
    figures,
    is_settled,
    last_line,
    read_summary,
    restatus,
    settle,
)
from distlab.experiments.tune.space import Domain, check_trials, grid_size, parse_space

SEARCHES = ("grid", "random", "optuna")
SCHEDULERS = ("fifo", "asha")
MODES = ("max", "min")
DEFAULT_MODE = {"accuracy": "max", "loss": "min"}
# Trials a search without grid keys runs unless --trials says otherwise.
DEFAULT_SAMPLES = 10
# Keys each trial sets itself: its run directory is OUT/trials/<trial>.
RESERVED_KEYS = ("name", "out_dir")
PLAN_FILE = "tune.json"
RAY_DIR = "ray"
# Seconds a stopped trial's run gets to record itself before it is killed.
STOP_GRACE_SECONDS = 10.0
POLL_SECONDS = 0.1
OPTUNA_MISSING = "--search optuna needs Optuna: pip install 'distlab[optuna]'"


@dataclass(frozen=True)
class TunePlan:
    """One search, checked: the base config (unvalidated mapping), the space, and how Tune
    runs it. `cpus` is the most processes one trial needs."""

    base: dict[str, Any]
    space: dict[str, Domain]
    out: Path
    trials: int
    search: str
    scheduler: str
    metric: str
    mode: str
    max_concurrent: int | None
    cpus: int
    cwd: str

    def record(self) -> dict[str, Any]:
        """What makes two searches the same (tune.json): --resume continues only this one."""
        return {
            "base": self.base,
            "space": {k: {d.kind: list(d.values)} for k, d in self.space.items()},
            "trials": self.trials,
            "search": self.search,
            "scheduler": self.scheduler,
            "metric": self.metric,
            "mode": self.mode,
            "max_concurrent": self.max_concurrent,
        }


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

    @property
    def iterations(self) -> int:
        """The evals, by the name cli.py reads."""
        return self.evals


# --- planning --------------------------------------------------------------------------------


def plan_tune(
    base: dict[str, Any],
    space: dict[str, Domain],
    out: str | Path,
    trials: int | None = None,
    search: str = "grid",
    scheduler: str = "fifo",
    metric: str = "accuracy",
    mode: str | None = None,
    max_concurrent: int | None = None,
) -> TunePlan:
    """Check every option and every configuration the space can give (each grid point with
    the first value of the sampled keys, and each sampled value once) before Ray starts;
    ValueError (one line, naming the key) otherwise."""
    check_choice("--search", search, SEARCHES)
    check_choice("--scheduler", scheduler, SCHEDULERS)
    check_choice("--metric", metric, tuple(METRICS))
    mode = mode or DEFAULT_MODE[metric]
    check_choice("--mode", mode, MODES)
    if max_concurrent is not None and max_concurrent < 1:
        raise ValueError(f"--max-concurrent must be >= 1 (got {max_concurrent})")
    if search == "optuna":
        check_optuna()
    trials = count_trials(space, search, trials)
    for key in space:
        check_key(key)
    base = copy.deepcopy(base)
    base.setdefault("threads", 1)  # trials run side by side: one torch thread per process
    cpus = check_points(base, space)
    # Trials start their runs from here, so relative paths in the config (data_dir) hold.
    cwd = str(Path.cwd())
    return TunePlan(
        base, space, Path(out).resolve(), trials, search, scheduler, metric, mode,
        max_concurrent, cpus, cwd,
    )  # fmt: skip


def check_choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{flag} must be one of {', '.join(allowed)} (got {value!r})")


def check_optuna() -> None:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ValueError(OPTUNA_MISSING) from None


def count_trials(space: dict[str, Domain], search: str, trials: int | None) -> int:
    """Grid search runs every grid point, each pass sampling the other keys afresh, so its
    trials are a multiple of the grid; random and Optuna search sample grid keys too."""
    grid = grid_size(space) if search == "grid" else 1
    has_grid = search == "grid" and any(d.is_grid for d in space.values())
    if trials is None:
        return grid if has_grid else DEFAULT_SAMPLES
    check_trials(trials)
    if trials % grid:
        raise ValueError(
            f"--trials {trials} with a grid of {grid} configurations: give a multiple of "
            f"{grid} (or --search random to sample the grid keys)"
        )
    return trials


def check_key(key: str) -> None:
    from distlab.config import config_field

    if key in RESERVED_KEYS:
        raise ValueError(f"search space key {key!r}: each trial names its own run directory")
    if config_field(key) is None:
        raise ValueError(
            f"search space key {key!r} is not a config field (use a config key such as "
            "optimizer.lr, workers, batch_size, strategy.local_epochs)"
        )


def check_points(base: dict[str, Any], space: dict[str, Domain]) -> int:
    """Validate the configurations the space gives as `distlab run` would (config, dataset,
    model fit, process count); the most processes one of them needs."""
    from distlab.experiments.sweep import Cell, check_cell_inputs, count_processes, validate_cell

    cells = []
    for values in sample_points(space):
        label = ", ".join(f"{k}={v}" for k, v in values.items())
        cfg = validate_cell(f"search space point {label}", trial_data(base, values))
        cells.append(Cell(label, values, json.loads(cfg.model_dump_json()), count_processes(cfg)))
    try:
        check_cell_inputs(cells)
    except ValueError as exc:
        raise ValueError(str(exc).replace("cell ", "search space point ", 1)) from None
    return max(c.processes for c in cells)


def sample_points(space: dict[str, Domain]) -> list[dict[str, Any]]:
    """Every grid point with the first value of each sampled key, then each other value of
    a sampled key (both bounds of a range) once, at the first grid point."""
    grid = {k: d.values for k, d in space.items() if d.is_grid}
    first = {k: d.values[0] for k, d in space.items() if not d.is_grid}
    points = [
        {**dict(zip(grid, combo, strict=True)), **first}
        for combo in itertools.product(*grid.values())
    ]
    for key, domain in space.items():
        if not domain.is_grid:
            points += [{**points[0], key: value} for value in domain.values[1:]]
    return points


def trial_data(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The base config with a trial's parameters. Where the space picks the strategy, base
    strategy keys the trial's strategy does not take are left out, as in a sweep; otherwise
    the keys are set directly, so a trial's worker need not import the strategies (torch)."""
    from distlab.config import set_dotted
    from distlab.experiments.sweep import cell_config

    if "strategy.name" in params:
        return cell_config(base, params)[0]
    data = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(data, key, value)
    return data


# --- the Ray side ----------------------------------------------------------------------------


def trial_resources(base: dict[str, Any], params: dict[str, Any]):
    """One CPU per process of the trial's run, in one bundle: a run's processes share a
    machine."""
    from ray.tune import PlacementGroupFactory

    from distlab.config import validate_config
    from distlab.experiments.sweep import count_processes

    cfg = validate_config(trial_data(base, plain_params(params)))
    return PlacementGroupFactory([{"CPU": count_processes(cfg)}])


def plain_params(params: dict[str, Any]) -> dict[str, Any]:
    """Tune's sampled values as plain Python (numpy scalars from some searchers)."""
    return {k: v.item() if hasattr(v, "item") else v for k, v in params.items()}


class TrialRun:
    """One trial's `distlab run` into ROOT/trials/<trial>, inside the trial's Tune actor:
    started, followed eval by eval (each eval event is one result for Tune), and settled
    when Tune ends the trial (see records.py)."""

    def __init__(self, params: dict[str, Any], base: dict[str, Any], root: Path, cwd: str,
                 name: str) -> None:  # fmt: skip
        data = trial_data(base, plain_params(params))
        data.update(out_dir=str(root / "trials"), name=name)
        self.name, self.run_dir = name, root / "trials" / name
        self.log = root / "logs" / f"{name}.log"
        shutil.rmtree(self.run_dir, ignore_errors=True)  # a restarted trial starts afresh
        self.proc = start_run(root, name, data, cwd)
        self.tails: dict[Path, Any] = {}
        self.evals: list[dict[str, Any]] = []
        self.reported = 0
        self.extra = {"run_dir": str(self.run_dir), "ray_address": ray_address()}
        self.failure: str | None = None
        self.final_given = False

    def next_result(self) -> dict[str, Any] | None:
        """The run's next eval as Tune's result, waited for. Once the run has ended and
        every eval was given: None (a run without an eval event gives its summary's final
        figures once first). A run that did not complete raises its cause: Tune records the
        trial as failed."""
        while True:
            running = self.proc.poll() is None
            poll_events(self.run_dir / "events", self.tails, self.evals)
            if self.reported < len(self.evals):
                event = self.evals[self.reported]
                self.reported += 1
                return {"accuracy": event["accuracy"], "loss": event["loss"], **self.extra}
            if not running:
                return self.ended()
            time.sleep(POLL_SECONDS)

    def ended(self) -> dict[str, Any] | None:
        summary = read_summary(self.run_dir)
        if summary.get("status") != "completed":
            cause = summary.get("error") or last_line(self.log) or "no cause recorded"
            self.failure = f"run {summary.get('status') or 'failed'}: {cause}"
            raise RuntimeError(self.failure)
        if self.reported or self.final_given:
            return None
        self.final_given = True
        return {m: summary.get(k) for m, k in METRICS.items()} | self.extra

    def settle(self) -> None:
        """Tune ended the trial: a run still going is stopped (SIGTERM: it records itself),
        and its record gets the final word, `stopped` where Tune stopped it (the search
        corrects this to `interrupted` where the search itself was stopped)."""
        was_running = stop_run(self.proc)
        if self.failure is not None:
            word, error = "failed", self.failure
        elif was_running:
            word, error = "stopped", None
        else:  # it ended by itself: completed or failed as it says, or killed without a word
            word, error = "failed", last_line(self.log) or "no cause recorded"
        settle(self.run_dir, self.name, word, self.reported, error)


def trial_trainable():
    """The Tune trainable: a class, so that Tune's stop (the scheduler's, the end of the
    search, Ctrl-C) runs `cleanup` in the trial's actor before the actor exits, and the run
    is stopped and recorded there (Ray SIGKILLs an exited worker's child processes, which
    leaves no record)."""
    from ray import tune
    from ray.tune.result import RESULT_DUPLICATE

    class DistlabTrial(tune.Trainable):
        def setup(self, config, base, root, cwd):
            self.run = TrialRun(config, base, Path(root), cwd, self.trial_id)

        def step(self):
            result = self.run.next_result()
            # The run has ended: Tune ends the trial on its last result, as for a function.
            return {RESULT_DUPLICATE: True} if result is None else result

        def cleanup(self):
            if hasattr(self, "run"):
                self.run.settle()

    return DistlabTrial


def start_run(root: Path, name: str, data: dict[str, Any], cwd: str) -> subprocess.Popen:
    """`distlab run` on the trial's config, its stderr kept in ROOT/logs/<trial>.log."""
    from distlab.experiments.sweep import die_with_parent

    for sub in ("configs", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    config = root / "configs" / f"{name}.json"
    config.write_text(json.dumps(data, indent=2, default=str))
    cmd = [sys.executable, "-m", "distlab", "run", "--quiet", "--config", str(config)]
    with open(root / "logs" / f"{name}.log", "w") as log:
        return subprocess.Popen(
            cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            # Dies with the trial's Ray worker (the kernel sends it SIGTERM), so a stopped
            # or killed search leaves no run behind.
            start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip


def poll_events(events: Path, tails: dict[Path, Any], evals: list[dict[str, Any]]) -> None:
    """New eval events of the run. Only the lead rank records evals, so every rank's file
    is followed and the evals come from whichever has them."""
    from distlab.runs.events import EventTail

    def keep(event: dict[str, Any]) -> None:
        if event.get("kind") == "eval":
            evals.append(event)

    for path in sorted(events.glob("rank-*.jsonl")):
        tails.setdefault(path, EventTail(path, keep)).poll()


def ray_address() -> str | None:
    """The cluster a trial runs on (its GCS address), kept in Tune's results."""
    import ray

    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # an older Ray without it: the address is only informative
        return None


def stop_run(proc: subprocess.Popen) -> bool:
    """SIGTERM a run that is still going and give it STOP_GRACE_SECONDS to record itself;
    whether it was still going."""
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return True


def param_space(plan: TunePlan) -> dict[str, Any]:
    """Ray domains; random and Optuna search sample a grid key like a choice."""
    from ray import tune

    space = {}
    for key, domain in plan.space.items():
        if domain.is_grid and plan.search != "grid":
            space[key] = tune.choice(list(domain.values))
        else:
            space[key] = domain.to_ray()
    return space


def make_searcher(plan: TunePlan):
    """Grid and random search: Tune's variant generator, seeded by the base config's seed
    so the same command samples the same trials; Optuna's TPE otherwise. Each caps the
    trials at once itself (Tune ignores max_concurrent_trials for the variant generator)."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    seed = int(plan.base.get("seed", 0))
    if plan.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        optuna = OptunaSearch(seed=seed)
        if plan.max_concurrent is None:
            return optuna
        return ConcurrencyLimiter(optuna, max_concurrent=plan.max_concurrent)
    return BasicVariantGenerator(max_concurrent=plan.max_concurrent or 0, random_state=seed)


def make_scheduler(plan: TunePlan):
    """ASHA over eval reports (training_iteration counts them): a trial continues past a
    rung (2, 4, 8, ... evals) only in the better half of the trials recorded there. The
    first rung is the second eval: the first comes too early in a run to rank it."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if plan.scheduler == "asha":
        return ASHAScheduler(grace_period=2, reduction_factor=2)
    return FIFOScheduler()


def make_trainable(plan: TunePlan):
    from ray import tune

    trainable = tune.with_parameters(
        trial_trainable(), base=plan.base, root=str(plan.out), cwd=plan.cwd
    )
    return tune.with_resources(trainable, partial(trial_resources, plan.base))


def samples(plan: TunePlan) -> int:
    """Tune's num_samples: passes over the grid for grid search, else trials."""
    return plan.trials // grid_size(plan.space) if plan.search == "grid" else plan.trials


def make_tuner(plan: TunePlan, resume: bool):
    from ray import tune

    trainable = make_trainable(plan)
    path = str(plan.out / RAY_DIR)
    if resume:
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    tune_config = tune.TuneConfig(
        metric=plan.metric,
        mode=plan.mode,
        search_alg=make_searcher(plan),
        scheduler=make_scheduler(plan),
        num_samples=samples(plan),
        # A trial's actor ends with it: its cleanup is what stops and records the run.
        reuse_actors=False,
    )
    run_config = tune.RunConfig(
        name=RAY_DIR,
        storage_path=str(plan.out),
        verbose=0,
        callbacks=[trial_events()],
        failure_config=tune.FailureConfig(max_failures=0),
        # A trial has nothing to save: its run is its record, and a restored trial reruns it.
        checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
    )
    return tune.Tuner(
        trainable, param_space=param_space(plan), tune_config=tune_config, run_config=run_config
    )


# --- progress --------------------------------------------------------------------------------

# Who hears, during the current search, of each trial Tune starts, ends or fails, and of each
# turn of Tune's loop: (what, trial id or None).
LISTENERS: list[Callable[[str, str | None], None]] = []


def tell_listeners(what: str, trial=None) -> None:
    trial_id = getattr(trial, "trial_id", trial)  # a trial, or its id
    for listen in LISTENERS:
        listen(what, trial_id)


def trial_events():
    """A Tune callback telling LISTENERS of each trial that starts, that Tune ends (its run
    completed, or the scheduler stopped it) or that fails, and of each turn of Tune's loop.
    Tune pickles it by value into the experiment state, so it looks this module up when
    called: a restored search reaches the listeners of its own run."""
    from ray.tune import Callback

    def tell(what: str, trial=None) -> None:
        from distlab.experiments.tune import runs

        runs.tell_listeners(what, trial)

    class TrialEvents(Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            tell("started", trial)

        def on_trial_complete(self, iteration, trials, trial, **info):
            tell("ended", trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            tell("failed", trial)

        def on_step_end(self, iteration, trials, **info):
            tell("turn")

    return TrialEvents()


@dataclass
class TrialWatch:
    """What Tune did to each trial in this session of the search, and the progress line of
    each trial that ended, said from its record once the trial has settled it (records.py):
    the line and every file then say the same. `on_trial(status, trial, figures)` gets the
    metric and `training_iteration` (the evals the run recorded), as cli.py reads them."""

    plan: TunePlan
    on_trial: Callable[[str, str, dict[str, Any]], None]
    started: set[str] = field(default_factory=set)
    ended: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    told: set[str] = field(default_factory=set)

    def hear(self, what: str, trial: str | None) -> None:
        if what == "started":
            self.started.add(trial)
            self.told.discard(trial)  # a trial Tune runs again is told again
        elif what in ("ended", "failed"):
            getattr(self, what).add(trial)
        for done in sorted((self.ended | self.failed) - self.told):
            if is_settled(self.run_dir(done)):
                self.tell(done)

    def run_dir(self, trial: str) -> Path:
        return self.plan.out / "trials" / trial

    def tell(self, trial: str) -> None:
        self.told.add(trial)
        record = figures(self.run_dir(trial), self.plan.metric)
        said = {self.plan.metric: record["value"], "training_iteration": record["evals"]}
        self.on_trial(record["status"] or "failed", trial, said)

    def word(self, trial) -> str:
        """The status a trial's unfinished run gets: stopped where Tune ended the trial,
        failed where it failed, interrupted where it was running when the search stopped;
        for a trial of an earlier session, Tune's state says which."""
        tid = trial.trial_id
        if tid in self.ended:
            return "stopped"
        if tid in self.failed:
            return "failed"
        if tid in self.started:
            return "interrupted"
        return {"TERMINATED": "stopped", "ERROR": "failed"}.get(trial.status, "interrupted")


# --- running ---------------------------------------------------------------------------------


@dataclass
class TuneOutcome:
    plan: TunePlan
    rows: list[TrialRow]
    best: TrialRow | None


def check_out(plan: TunePlan, resume: bool) -> None:
    """A new search needs an empty OUT; --resume needs the same search in it."""
    if resume:
        if read_record(plan.out) != json.loads(json.dumps(plan.record(), default=str)):
            raise ValueError(
                f"--resume: {str(plan.out)!r} holds another search (its config, space or "
                "options differ): give the same ones, or another --out"
            )
    elif plan.out.exists() and any(plan.out.iterdir()):
        raise ValueError(
            f"--out {str(plan.out)!r} is not empty: --resume to continue its search, or "
            "another --out"
        )


def prepare_out(plan: TunePlan, resume: bool) -> None:
    check_out(plan, resume)
    if not resume:
        plan.out.mkdir(parents=True, exist_ok=True)
        record = json.dumps(plan.record(), indent=2, default=str)
        (plan.out / PLAN_FILE).write_text(record + "\n")


def read_record(out: Path) -> dict[str, Any]:
    """The search kept in OUT (tune.json), for --resume; ValueError when there is none."""
    try:
        record = json.loads((Path(out) / PLAN_FILE).read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or not (Path(out) / RAY_DIR / "tuner.pkl").exists():
        raise ValueError(
            f"--resume: {str(out)!r} holds no search to continue; run without --resume to start one"
        )
    return record


def plan_from_record(out: str | Path) -> TunePlan:
    """The search kept in OUT, checked again: `--resume --out OUT` alone continues it."""
    record = read_record(Path(out))
    return plan_tune(
        record["base"], parse_space(record["space"]), out, record["trials"], record["search"],
        record["scheduler"], record["metric"], record["mode"], record["max_concurrent"],
    )  # fmt: skip


def run_tune(
    plan: TunePlan,
    address: str | None = None,
    resume: bool = False,
    on_trial: Callable[[str, str, dict[str, Any]], None] | None = None,
) -> TuneOutcome:
    """Run the search on a local Ray (this machine's cores) or the cluster at `address`,
    then write results.csv, results.md, best.yaml and metric.png into OUT. Ctrl-C stops the
    trials, writes the files for those that finished and raises RunInterrupted."""
    from distlab.experiments.tune.cluster import ray_session
    from distlab.runtime.failures import RunFailed, RunInterrupted

    check_where(plan, address, resume)
    prepare_out(plan, resume)
    # Tune's progress tables off (verbose=0 silences only its older output engine): the
    # command prints a line per trial itself.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Trials that never reported (pending at Ctrl-C) are rows of their own here, not warnings.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    watch = TrialWatch(plan, on_trial or (lambda *_: None))
    with ray_session(address) as ray:
        if address is not None:
            check_cpus(plan, largest_node(ray), f"the largest node of the cluster at {address} has")
        tuner = make_tuner(plan, resume)
        LISTENERS.append(watch.hear)
        try:
            tuner.fit()
        finally:
            LISTENERS.pop()
    trials = tune_trials(plan)
    settle_trials(plan, watch, trials)
    rows = [trial_row(plan, t) for t in trials]
    outcome = TuneOutcome(plan, rows, best_row(plan, rows))
    write_outcome(outcome)
    done = sum(r.status in FINISHED for r in rows)
    if done < plan.trials:
        raise RunInterrupted(
            f"tune interrupted: {done} of {plan.trials} trials finished; rerun with --resume "
            f"--out {plan.out} to continue"
        )
    if outcome.best is None:
        first = next((r for r in rows if r.error), None)
        cause = f" (first: {first.trial}: {first.error})" if first else ""
        raise RunFailed(f"no trial of {len(rows)} completed{cause}")
    return outcome


def check_where(plan: TunePlan, address: str | None, resume: bool = False) -> None:
    """Ray is installed, OUT is empty (or holds this search for --resume), and the cluster
    at `address` answers (within 30 s) or this machine has the CPUs a trial needs;
    ValueError otherwise, before Ray starts."""
    from distlab.experiments.tune.cluster import check_address, import_ray

    import_ray()
    check_out(plan, resume)
    if address is not None:
        check_address(address)
    else:
        check_cpus(plan, cpu_count(), "this machine has")


def cpu_count() -> int:
    return os.cpu_count() or 1


def largest_node(ray) -> int:
    cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return int(max(cpus, default=0))


def check_cpus(plan: TunePlan, cpus: int, where: str) -> None:
    """A trial's processes share one machine: one that needs more CPUs than any node has
    would wait for ever."""
    if plan.cpus > cpus:
        raise ValueError(
            f"a trial needs {plan.cpus} processes (one CPU each) but {where} {cpus} CPUs: "
            "lower workers in the config or the space"
        )


def tune_trials(plan: TunePlan) -> list:
    """Every trial Tune knows of, in trial order, from its experiment state: their ids,
    parameters and Tune's status."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(plan.out / RAY_DIR))
    return sorted(analysis.trials, key=lambda t: t.trial_id.rsplit("_", 1)[-1])


def settle_trials(plan: TunePlan, watch: TrialWatch, trials: list) -> None:
    """Every trial's record final once Tune is done: one whose actor could not settle it
    (killed before its cleanup ran) is settled here, from its events if its run wrote no
    summary; a trial that was still running when the search stopped is `interrupted` (its
    actor, which cannot tell, said stopped). Then the line of each trial not yet said."""
    for trial in trials:
        run_dir = watch.run_dir(trial.trial_id)
        word = watch.word(trial)
        if not is_settled(run_dir):
            reported = (trial.last_result or {}).get("training_iteration")
            error = last_line(plan.out / "logs" / f"{trial.trial_id}.log")
            settle(run_dir, trial.trial_id, word, reported, error if word == "failed" else None)
        elif word == "interrupted" and trial.trial_id in watch.started:
            restatus(run_dir, word)
        ran = trial.trial_id in watch.started | watch.ended | watch.failed
        if ran and trial.trial_id not in watch.told and read_summary(run_dir):
            watch.tell(trial.trial_id)


# Statuses of a trial that ended; pending (never started) and interrupted trials run again on
# --resume.
FINISHED = ("completed", "stopped", "failed")


def trial_row(plan: TunePlan, trial) -> TrialRow:
    """The trial's row, from its record alone; Tune gives only its id and parameters (and
    says failed where a trial failed before its run made a directory)."""
    params = plain_params(trial.config)
    record = figures(plan.out / "trials" / trial.trial_id, plan.metric)
    status = record["status"] or ("failed" if trial.status == "ERROR" else "pending")
    error = None
    if status == "failed":
        log = plan.out / "logs" / f"{trial.trial_id}.log"
        error = record["error"] or last_line(log) or "no cause recorded"
    return TrialRow(
        trial.trial_id, status, record["evals"], record["value"], record["seconds"], params,
        best_config(plan, params), error,
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
        table.append(row | ({"error": r.error} if r.error else {}))
    return table


def write_outcome(outcome: TuneOutcome) -> None:
    from distlab.experiments.tune.results import write_results

    plan = outcome.plan
    best = outcome.best.config if outcome.best else None
    write_results(plan.out, table_rows(plan, outcome.rows), plan.metric, plan.mode, best)
