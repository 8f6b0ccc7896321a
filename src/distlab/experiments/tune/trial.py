"""One trial, inside its Tune actor: the trial's `distlab run` child into OUT/trials/<trial>
(a normal run directory, the trial's record: records.py), followed eval by eval (each eval
event is one result for Tune, so ASHA can stop a bad trial after its first evaluations),
and stopped and settled when Tune ends the trial. A trial asks Ray for one CPU per process
of its run, so Ray never starts more processes than the cluster has cores.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from distlab.experiments.tune.plan import plain_params, trial_data
from distlab.experiments.tune.records import METRICS, settle
from distlab.runs.child import RunChild

# Seconds a stopped trial's run gets to record itself before it is killed.
STOP_GRACE_SECONDS = 10.0
POLL_SECONDS = 0.1
NO_CAUSE = "no cause recorded"


def trial_resources(base: dict[str, Any], params: dict[str, Any]):
    """One CPU per process of the trial's run, in one bundle: a run's processes share a
    machine."""
    from ray.tune import PlacementGroupFactory

    from distlab.api import process_count
    from distlab.config import validate_config

    cfg = validate_config(trial_data(base, plain_params(params)))
    return PlacementGroupFactory([{"CPU": process_count(cfg)}])


class TrialRun:
    """One trial's `distlab run` into ROOT/trials/<trial>: started, followed eval by eval,
    and settled when Tune ends the trial (see records.py)."""

    def __init__(self, params: dict[str, Any], base: dict[str, Any], root: Path, cwd: str,
                 name: str) -> None:  # fmt: skip
        data = trial_data(base, plain_params(params))
        data.update(out_dir=str(root / "trials"), name=name)
        self.name, self.run_dir = name, root / "trials" / name
        shutil.rmtree(self.run_dir, ignore_errors=True)  # a restarted trial starts afresh
        self.child = start_run(root, name, data, cwd)
        write_node(root, name)
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
            running = self.child.running()
            self.evals += [e for e in self.child.new_events() if e.get("kind") == "eval"]
            if self.reported < len(self.evals):
                event = self.evals[self.reported]
                self.reported += 1
                return {"accuracy": event["accuracy"], "loss": event["loss"], **self.extra}
            if not running:
                return self.ended()
            time.sleep(POLL_SECONDS)

    def ended(self) -> dict[str, Any] | None:
        outcome = self.child.outcome()
        if not outcome.completed:
            self.failure = f"run {outcome.status}: {outcome.error or NO_CAUSE}"
            raise RuntimeError(self.failure)
        if self.reported or self.final_given:
            return None
        self.final_given = True
        return {m: outcome.summary.get(k) for m, k in METRICS.items()} | self.extra

    def settle(self) -> None:
        """Tune ended the trial: a run still going is stopped (SIGTERM: it records itself),
        and its record gets the final word, `stopped` where Tune stopped it (the search
        corrects this to `interrupted` where the search itself was stopped)."""
        was_running = self.child.stop(grace=STOP_GRACE_SECONDS)
        if self.failure is not None:
            word, error = "failed", self.failure
        elif was_running:
            word, error = "stopped", None
        else:  # it ended by itself: completed or failed as it says, or killed without a word
            word, error = "failed", self.child.last_line() or NO_CAUSE
        settle(self.run_dir, self.name, word, self.reported, error)


def node_file(root: Path, name: str) -> Path:
    """Where a trial records the node its run runs on."""
    return root / "logs" / f"{name}.node.json"


def write_node(root: Path, name: str) -> None:
    """Record the node this trial's run runs on (results.csv's node and host)."""
    from distlab.experiments.tune.cluster import this_node

    node_file(root, name).write_text(json.dumps(this_node()))


def read_node(root: Path, name: str) -> dict[str, str]:
    """The node a trial's run ran on ({} where it never started)."""
    try:
        return json.loads(node_file(root, name).read_text())
    except (OSError, ValueError):
        return {}


def start_run(root: Path, name: str, data: dict[str, Any], cwd: str) -> RunChild:
    """`distlab run` on the trial's config, its stderr kept in ROOT/logs/<trial>.log. It
    dies with the trial's Ray worker, so a stopped or killed search leaves no run behind."""
    for sub in ("configs", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    config = root / "configs" / f"{name}.json"
    config.write_text(json.dumps(data, indent=2, default=str))
    return RunChild.start(config, root / "trials" / name, root / "logs" / f"{name}.log", cwd)


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


def ray_address() -> str | None:
    """The cluster a trial runs on (its GCS address), kept in Tune's results."""
    import ray

    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # an older Ray without it: the address is only informative
        return None
