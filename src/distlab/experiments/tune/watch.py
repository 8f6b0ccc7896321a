"""What Tune does to each trial during a search, heard through a Tune callback, and the
progress line of each trial that ended, said from its record (records.py) once the trial
has settled it: the line and every file then say the same."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from distlab.experiments.tune.plan import TunePlan
from distlab.experiments.tune.records import figures, is_settled

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
        from distlab.experiments.tune import watch

        watch.tell_listeners(what, trial)

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
    metric and `training_iteration` (the evals the run recorded), as the command reads
    them."""

    plan: TunePlan
    on_trial: Callable[[str, str, dict[str, Any]], None]
    started: set[str] = field(default_factory=set)
    ended: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    told: set[str] = field(default_factory=set)
    lost: list[dict[str, str]] = field(default_factory=list)  # nodes lost during the search

    def hear(self, what: str, trial: str | None) -> None:
        if what == "started":
            self.started.add(trial)
            self.told.discard(trial)  # a trial Tune runs again is told again
        elif what in ("ended", "failed"):
            getattr(self, what).add(trial)
        for done in sorted((self.ended | self.failed) - self.told):
            if is_settled(self.plan.run_dir(done)):
                self.tell(done)

    def tell(self, trial: str) -> None:
        self.told.add(trial)
        record = figures(self.plan.run_dir(trial), self.plan.metric)
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
