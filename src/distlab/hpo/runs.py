"""distlab runs as Ray Tune trials: `distlab tune --config base.yaml --space space.yaml`.

Each trial is the base config with the trial's parameters, run as a `distlab run` process
into OUT/trials/<trial>/ (a normal run directory), as a sweep runs its cells. The trial
follows the run's events as they are written and reports every eval to Tune, so ASHA
(Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning") can stop a bad
trial after its first evaluations. A trial asks Ray for one CPU per process of its run, so
Ray never starts more processes than the cluster has cores. Everything is checked before
Ray starts; OUT also holds Ray's experiment state, which `--resume` continues from.
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
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from distlab.hpo.space import Domain, check_trials, grid_size, parse_space

SEARCHES = ("grid", "random", "optuna")
SCHEDULERS = ("fifo", "asha")
# The eval event's value each trial reports, and the summary figure that is its final value.
METRICS = {"accuracy": "final_accuracy", "loss": "final_loss"}
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
    """One trial's outcome: `status` is completed, stopped (by the scheduler), failed or
    pending (not finished when the search stopped)."""

    trial: str
    status: str
    iterations: int
    value: float | None
    seconds: float | None
    params: dict[str, Any]
    config: dict[str, Any] | None
    error: str | None = None


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
    from distlab.sweep import Cell, check_cell_inputs, count_processes, validate_cell

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
    from distlab.sweep import cell_config

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
    from distlab.sweep import count_processes

    cfg = validate_config(trial_data(base, plain_params(params)))
    return PlacementGroupFactory([{"CPU": count_processes(cfg)}])


def plain_params(params: dict[str, Any]) -> dict[str, Any]:
    """Tune's sampled values as plain Python (numpy scalars from some searchers)."""
    return {k: v.item() if hasattr(v, "item") else v for k, v in params.items()}


def run_trial(params: dict[str, Any], base: dict[str, Any], root: str, cwd: str) -> None:
    """One trial: `distlab run` on the base config with `params` into
    ROOT/trials/<trial id>, each eval event reported to Tune as it is written; an error
    when the run does not complete (Tune records the trial as failed, with the run's cause)."""
    from ray import tune

    name = tune.get_context().get_trial_id()
    data = trial_data(base, plain_params(params))
    data.update(out_dir=str(Path(root) / "trials"), name=name)
    run_dir = Path(root) / "trials" / name
    shutil.rmtree(run_dir, ignore_errors=True)  # a restarted trial starts its run afresh
    proc = start_run(Path(root), name, data, cwd)
    try:
        reported = follow_run(proc, run_dir)
    finally:
        stop_run(proc)
    finish_trial(run_dir, reported, Path(root) / "logs" / f"{name}.log")


def start_run(root: Path, name: str, data: dict[str, Any], cwd: str) -> subprocess.Popen:
    """`distlab run` on the trial's config, its stderr kept in ROOT/logs/<trial>.log."""
    from distlab.sweep import die_with_parent

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


def follow_run(proc: subprocess.Popen, run_dir: Path) -> int:
    """Report each eval event of the run to Tune while it runs; how many were reported.
    Only the lead rank records evals, so every rank's file is followed and the evals come
    from whichever has them."""
    from ray import tune

    evals: list[dict[str, Any]] = []
    tails: dict[Path, Any] = {}
    extra = {"run_dir": str(run_dir), "ray_address": ray_address()}
    reported = 0
    while True:
        running = proc.poll() is None
        poll_events(run_dir / "events", tails, evals)
        for event in evals[reported:]:
            # Blocks until Tune asks for the next result; in a trial the scheduler stops
            # it raises SystemExit, and the run is stopped on the way out.
            tune.report({"accuracy": event["accuracy"], "loss": event["loss"], **extra})
            reported += 1
        if not running:
            return reported
        time.sleep(POLL_SECONDS)


def poll_events(events: Path, tails: dict[Path, Any], evals: list[dict[str, Any]]) -> None:
    from distlab.metrics import EventTail

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


def stop_run(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def finish_trial(run_dir: Path, reported: int, log: Path) -> None:
    """A run that did not complete fails the trial with its cause; one that completed
    without an eval event reports its summary's final figures once."""
    from ray import tune

    summary = read_summary(run_dir)
    if summary.get("status") != "completed":
        cause = summary.get("error") or last_line(log) or "no cause recorded"
        raise RuntimeError(f"run {summary.get('status') or 'failed'}: {cause}")
    if reported == 0:
        tune.report({m: summary.get(k) for m, k in METRICS.items()} | {"run_dir": str(run_dir)})


def ended_status(result: dict[str, Any]) -> str:
    """How a trial Tune ended: completed when its run completed and Tune took every eval
    of it, else stopped (by the scheduler; Tune marks both alike)."""
    run_dir = result.get("run_dir")
    summary = read_summary(Path(run_dir)) if run_dir else {}
    if summary.get("status") != "completed":
        return "stopped"
    evals = count_evals(Path(run_dir), summary.get("lead_rank") or 0)
    return "completed" if (result.get("training_iteration") or 0) >= max(evals, 1) else "stopped"


def count_evals(run_dir: Path, lead: int) -> int:
    from distlab.metrics import read_events

    try:
        events = read_events(run_dir / "events.jsonl")
    except (OSError, ValueError):
        return 0
    return sum(e.get("kind") == "eval" and e.get("rank") == lead for e in events)


def read_summary(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def last_line(log: Path) -> str | None:
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return None
    said = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return said[-1] if said else (lines[-1] if lines else None)


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

    trainable = tune.with_parameters(run_trial, base=plan.base, root=str(plan.out), cwd=plan.cwd)
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
    )
    run_config = tune.RunConfig(
        name=RAY_DIR,
        storage_path=str(plan.out),
        verbose=0,
        callbacks=[trial_lines()],
        failure_config=tune.FailureConfig(max_failures=0),
    )
    return tune.Tuner(
        trainable, param_space=param_space(plan), tune_config=tune_config, run_config=run_config
    )


# --- progress --------------------------------------------------------------------------------

# Who hears of trials ending during the current search: (kind, trial id, last result).
LISTENERS: list[Callable[[str, str, dict[str, Any]], None]] = []


def tell_listeners(kind: str, trial) -> None:
    result = trial.last_result or {}
    if kind == "ended":
        kind = ended_status(result)
    for listen in LISTENERS:
        listen(kind, trial.trial_id, result)


def trial_lines():
    """A Tune callback telling LISTENERS of each trial that ends (completed, stopped by
    the scheduler, failed). Tune pickles it by value into the experiment state, so it looks
    this module up when called: a restored search reaches the listeners of its own run."""
    from ray.tune import Callback

    class TrialLines(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            from distlab.hpo import runs

            runs.tell_listeners("ended", trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            from distlab.hpo import runs

            runs.tell_listeners("failed", trial)

    return TrialLines()


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
    from distlab.hpo.cluster import ray_session
    from distlab.runtime.failures import RunFailed, RunInterrupted

    check_where(plan, address, resume)
    prepare_out(plan, resume)
    # Tune's progress tables off (verbose=0 silences only its older output engine): the
    # command prints a line per trial itself.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Trials that never reported (pending at Ctrl-C) are rows of their own here, not warnings.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    with ray_session(address) as ray:
        if address is not None:
            check_cpus(plan, largest_node(ray), f"the largest node of the cluster at {address} has")
        tuner = make_tuner(plan, resume)
        LISTENERS.append(on_trial or (lambda *_: None))
        try:
            tuner.fit()
        finally:
            LISTENERS.pop()
    rows = collect_rows(plan)
    outcome = TuneOutcome(plan, rows, best_row(plan, rows))
    write_outcome(outcome)
    done = sum(r.status != "pending" for r in rows)
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
    from distlab.hpo.cluster import check_address, import_ray

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


def collect_rows(plan: TunePlan) -> list[TrialRow]:
    """One row per trial Tune knows of, in trial order, from its experiment state and each
    trial's run directory."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(plan.out / RAY_DIR))
    trials = sorted(analysis.trials, key=lambda t: t.trial_id.rsplit("_", 1)[-1])
    return [trial_row(plan, t) for t in trials]


def trial_row(plan: TunePlan, trial) -> TrialRow:
    result = trial.last_result or {}
    params = plain_params(trial.config)
    run_dir = plan.out / "trials" / trial.trial_id
    summary = read_summary(run_dir)
    status = {"TERMINATED": ended_status(result), "ERROR": "failed"}.get(trial.status, "pending")
    value = summary.get(METRICS[plan.metric]) if status == "completed" else result.get(plan.metric)
    error = None
    if status == "failed":
        log = plan.out / "logs" / f"{trial.trial_id}.log"
        error = summary.get("error") or last_line(log) or "no cause recorded"
    return TrialRow(
        trial.trial_id, status, int(result.get("training_iteration") or 0), value,
        summary.get("wall_seconds") or result.get("time_total_s"), params,
        best_config(plan, params), error,
    )  # fmt: skip


def best_config(plan: TunePlan, params: dict[str, Any]) -> dict[str, Any]:
    """The trial's config, ready for `distlab run --config` (name and out_dir left to it)."""
    data = trial_data(plan.base, params)
    return {k: v for k, v in data.items() if k not in RESERVED_KEYS}


def best_row(plan: TunePlan, rows: list[TrialRow]) -> TrialRow | None:
    done = [r for r in rows if r.status == "completed" and is_value(r.value)]
    if not done:
        return None
    pick = max if plan.mode == "max" else min
    return pick(done, key=lambda r: r.value)


def is_value(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def ranked(outcome: TuneOutcome, count: int = 5) -> list[TrialRow]:
    """The best `count` trials that completed, best first."""
    done = [r for r in outcome.rows if r.status == "completed" and is_value(r.value)]
    return sorted(done, key=lambda r: r.value, reverse=outcome.plan.mode == "max")[:count]


def write_outcome(outcome: TuneOutcome) -> None:
    from distlab.hpo.results import write_results

    plan = outcome.plan
    rows = []
    for r in outcome.rows:
        row = {"trial": r.trial, "status": r.status, "iterations": r.iterations}
        row |= {plan.metric: r.value, "seconds": r.seconds, **r.params}
        rows.append(row | ({"error": r.error} if r.error else {}))
    best = outcome.best.config if outcome.best else None
    write_results(plan.out, rows, plan.metric, plan.mode, best)
