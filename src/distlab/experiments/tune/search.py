"""distlab runs as Ray Tune trials: `distlab tune --config base.yaml --space space.yaml`.

Each trial is the base config with the trial's parameters (plan.py), run as a `distlab run`
child into OUT/trials/<trial>/ and followed eval by eval (trial.py), so ASHA (Li et al.
2020, "A System for Massively Parallel Hyperparameter Tuning") can stop a bad trial after its
first evaluations; a stopped trial's run is stopped and keeps its record. That run directory
is the trial's record (records.py): every file of the search, and the line printed for each
trial, says what it says. Everything is checked before Ray starts; OUT also holds Ray's
experiment state, which `--resume` continues from.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from distlab.experiments.tune.cluster import (
    alive_nodes,
    check_shared,
    largest_node,
    lost_nodes,
    node_label,
)
from distlab.experiments.tune.outcome import (
    FINISHED,
    TuneOutcome,
    best_row,
    trial_row,
    write_outcome,
)
from distlab.experiments.tune.plan import RAY_DIR, TunePlan, check_out, prepare_out
from distlab.experiments.tune.records import is_settled, restatus, settle, write_summary
from distlab.experiments.tune.space import grid_size
from distlab.experiments.tune.trial import read_node, trial_resources, trial_trainable
from distlab.experiments.tune.watch import LISTENERS, TrialWatch, trial_events
from distlab.runs.child import last_line, read_summary


def run_tune(
    plan: TunePlan,
    address: str | None = None,
    resume: bool = False,
    on_trial: Callable[[str, str, dict[str, Any]], None] | None = None,
) -> TuneOutcome:
    """Run the search on a local Ray (this machine's cores) or the cluster at `address`,
    then write results.csv, results.md, best.yaml and metric.png into OUT. Ctrl-C stops the
    trials, writes the files for those that finished and raises RunInterrupted."""
    from distlab.api import RunFailed, RunInterrupted

    watch = search(plan, address, resume, on_trial)
    trials = tune_trials(plan)
    settle_trials(plan, watch, trials)
    say_lost(plan, watch, trials)
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


def search(plan: TunePlan, address: str | None, resume: bool, on_trial) -> TrialWatch:
    """Tune's run of the search, heard trial by trial; what Tune did to each trial."""
    from distlab.experiments.tune.cluster import ray_session

    check_where(plan, address, resume)
    # Tune's progress tables off (verbose=0 silences only its older output engine): the
    # command prints a line per trial itself.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Trials that never reported (pending at Ctrl-C) are rows of their own here, not warnings.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    watch = TrialWatch(plan, on_trial or (lambda *_: None))
    with ray_session(address) as ray:
        if address is not None:
            check_cluster(ray, plan, address)
        before = alive_nodes(ray)
        prepare_out(plan, resume)
        tuner = make_tuner(plan, resume)
        LISTENERS.append(watch.hear)
        try:
            tuner.fit()
        finally:
            LISTENERS.pop()
            watch.lost = lost_nodes(before, ray)
    return watch


def check_cluster(ray, plan: TunePlan, address: str) -> None:
    """A trial fits on a node of the cluster, and every node writes its trials' runs where
    the driver reads them (OUT shared by every node)."""
    check_cpus(plan, largest_node(ray), f"the largest node of the cluster at {address} has")
    check_shared(ray, plan.out)


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


def check_cpus(plan: TunePlan, cpus: int, where: str) -> None:
    """A trial's processes share one machine: one that needs more CPUs than any node has
    would wait for ever."""
    if plan.cpus > cpus:
        raise ValueError(
            f"a trial needs {plan.cpus} processes (one CPU each) but {where} {cpus} CPUs: "
            "lower workers in the config or the space"
        )


# --- Tune's pieces -----------------------------------------------------------------------------


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


# --- after Tune -----------------------------------------------------------------------------

LOST = "node {} lost during the search"


def blame_node(run_dir, node: dict[str, str]) -> None:
    """A failed trial whose node was lost: the loss is its cause, said first."""
    summary = read_summary(run_dir)
    if summary and summary.get("status") != "completed":
        cause = LOST.format(node_label(node["node"], node["host"]))
        old = summary.get("error")
        summary["error"] = f"{cause} ({old})" if old else cause
        write_summary(run_dir, summary)


def say_lost(plan: TunePlan, watch: TrialWatch, trials: list) -> None:
    """One line per node the cluster lost during the search, naming its trials."""
    for node in watch.lost:
        mine = [t.trial_id for t in trials if read_node(plan.out, t.trial_id) == node]
        said = f"its trials {', '.join(mine)} failed" if mine else "no trial ran there"
        print(f"{LOST.format(node_label(node['node'], node['host']))}: {said}", file=sys.stderr)


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
    lost = {n["node"]: n for n in watch.lost}
    for trial in trials:
        run_dir = plan.run_dir(trial.trial_id)
        word = watch.word(trial)
        if not is_settled(run_dir):
            reported = (trial.last_result or {}).get("training_iteration")
            error = last_line(plan.log(trial.trial_id)) if word == "failed" else None
            settle(run_dir, trial.trial_id, word, reported, error)
            node = lost.get(read_node(plan.out, trial.trial_id).get("node"))
            if node and word == "failed":
                blame_node(run_dir, node)
        elif word == "interrupted" and trial.trial_id in watch.started:
            restatus(run_dir, word)
        ran = trial.trial_id in watch.started | watch.ended | watch.failed
        if ran and trial.trial_id not in watch.told and read_summary(run_dir):
            watch.tell(trial.trial_id)
