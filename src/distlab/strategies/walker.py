"""One rank's steps through the phases of a run whose ranks walk apart.

train_epochs serves ranks that step together. Where each rank walks its own batches
between collectives (distillation's members, which may hold shards one batch apart), a
`Walker` records every step as train_epochs records it, and writes the checkpoints due at
the lead's step count at a consistent cut: a rank with fewer batches in an epoch writes a
checkpoint due at the lead's batch b after its own batch min(b, its count), and one due at
the lead's last batch after the epoch's evaluation, as the lead does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from distlab.runtime.context import WorkerContext

# step(x, y) -> (loss, extra fields of its step event)
PhaseStep = Callable[[torch.Tensor, torch.Tensor], tuple[float, dict]]

AFTER_EVAL = -1  # save_points' key for a checkpoint written after an epoch's evaluation


class Walker:
    """This rank's step count through every phase, and the checkpoints due in the current
    one. `kept()` names what a checkpoint holds besides the random generators."""

    def __init__(self, ctx: WorkerContext, kept: Callable[[], dict]) -> None:
        self.ctx, self.kept, self.done = ctx, kept, 0
        self.points: dict[tuple[int, int], list[int]] = {}  # the phase's save_points

    def walk(self, batches: list[np.ndarray], step: PhaseStep, epoch: int, stage: str, skip: int):
        """One epoch of `step` from batch `skip` on, each step recorded as train_epochs
        records it, a checkpoint written where one falls."""
        ctx, x, y = self.ctx, self.ctx.data.x_train, self.ctx.data.y_train
        for i in range(skip, len(batches)):
            index = torch.from_numpy(batches[i]).to(x.device)
            start = time.perf_counter()
            loss, fields = step(x[index], y[index])
            self.done += 1
            ctx.maybe_fault(self.done)
            ctx.check_loss(loss, self.done)
            duration = time.perf_counter() - start
            ctx.recorder.step(
                self.done, loss, len(index), duration, epoch=epoch, stage=stage, **fields
            )
            self.save_due((epoch, i + 1), {"phase": stage, "epoch": epoch, "batch": i + 1})

    def restore(self, first_phase: str) -> dict:
        """Where this rank starts: the resumed checkpoint's position (what `kept` names and
        the generators loaded), or the first step of `first_phase`."""
        state = self.ctx.restore(self.kept())
        if state is None:
            return {"phase": first_phase, "epoch": 0, "batch": 0, "done": 0}
        self.done = state["position"]["done"]
        return state["position"]

    def save_due(self, key: tuple[int, int], position: dict) -> None:
        """Write the checkpoints that fall at `key` of this phase. Ranks walk apart and a
        gather does not hold a sender back, so the ranks meet first: each has then
        completed the previous checkpoint, which keeps one complete checkpoint on disk."""
        for at in self.points.get(key, []):
            self.ctx.comm.barrier()
            self.ctx.save_checkpoint(at, "step", self.kept(), position | {"done": self.done})

    def plan_phase(self, mine: list[int], lead: list[int], offset: int) -> None:
        """The checkpoints of a phase of len(mine) epochs: this rank walks `mine` batches per
        epoch where the lead walks `lead`, the lead's steps counted on from `offset`."""
        self.points = save_points(self.ctx, mine, lead, offset)


def save_points(
    ctx: WorkerContext, mine: list[int], lead: list[int], offset: int
) -> dict[tuple[int, int], list[int]]:
    """Where this rank writes each checkpoint due in a phase, keyed (epoch, batches done)
    or (epoch, AFTER_EVAL). checkpoint.every counts the lead's steps, the step numbers of
    the run's record (from `offset`). A rank with `mine` batches per epoch where the lead
    has `lead` writes a checkpoint due at the lead's batch b after its own batch
    min(b, mine) and one due at the lead's last batch after the epoch's evaluation, as the
    lead does: no message passes between ranks within an epoch, so these states are a
    consistent cut of the run."""
    points: dict[tuple[int, int], list[int]] = {}
    at = offset
    for epoch, (n_mine, n_lead) in enumerate(zip(mine, lead, strict=True)):
        for b in range(1, n_lead + 1):
            at += 1
            if ctx.checkpoint_due(at):
                key = (epoch, AFTER_EVAL if b == n_lead else min(b, n_mine))
                points.setdefault(key, []).append(at)
    return points
