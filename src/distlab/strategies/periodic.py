"""Which steps of a periodic-averaging run communicate (local SGD, gossip).

The plan is a function of the config and the epoch length alone: every rank and the summary
derive the same schedule, so no message says what comes next.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """A step is a warmup allreduce, an averaging (every `period` local steps after the
    warmup, and the last step), an eval-only averaging, or local."""

    steps_per_epoch: int
    epochs: int
    period: int | None  # None: average at the end only
    warmup: int
    eval_every: int

    @property
    def total(self) -> int:
        return self.steps_per_epoch * self.epochs

    def evaluates(self, step: int) -> bool:
        """Whether train_epochs evaluates after this step (its rule, step by step)."""
        every = self.eval_every or self.steps_per_epoch
        return step % every == 0 or step == self.total

    def kind(self, step: int) -> str:
        """allreduce (warmup), average, eval-average (for the evaluation copy only) or local."""
        if step <= self.warmup:
            return "allreduce"
        local = step - self.warmup
        if step == self.total or (self.period is not None and local % self.period == 0):
            return "average"
        return "eval-average" if self.evaluates(step) else "local"
