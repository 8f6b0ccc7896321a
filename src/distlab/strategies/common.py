"""The epoch loop the data-parallel strategies share, and the batch schedules it walks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from distlab.clock import StepClock
from distlab.data.samplers import epoch_batches, subset_batches
from distlab.training import compute_gradients

if TYPE_CHECKING:
    from distlab.runtime.context import WorkerContext

# step(x, y) -> (mean loss over the global batch, global samples) after one synchronized update,
# optionally with a dict of fields for the step event (the attackers of a Byzantine step)
StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[float, int] | tuple[float, int, dict]]
# batches(epoch) -> the index batches one worker walks in that epoch
Schedule = Callable[[int], list[np.ndarray]]
# count(steps done) -> (unit, count) that names a checkpoint taken there, or None where the
# strategy takes none (gossip counts rounds, which end at some steps only)
Count = Callable[[int], tuple[str, int] | None]


def local_step(model: nn.Module, opt: torch.optim.Optimizer) -> StepFn:
    """One plain optimizer step on this rank's batch, no communication: centralized SGD,
    and the local phase of local-SGD or averaging paradigms."""

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        loss = compute_gradients(model, x, y)
        opt.step()
        return loss, len(y)

    return step


def sampler_schedule(ctx: WorkerContext, rank: int, world: int) -> Schedule:
    """The run's --sampler share of the whole training set for `rank` of `world`."""
    cfg, labels = ctx.cfg, ctx.labels()
    return lambda epoch: epoch_batches(
        cfg.sampler, labels, cfg.batch_size, epoch, cfg.seed, rank, world
    )


def own_schedule(ctx: WorkerContext, indices: np.ndarray, stream: int) -> Schedule:
    """A worker's own index subset (its partition), reshuffled every epoch."""
    cfg = ctx.cfg
    return lambda epoch: subset_batches(indices, cfg.batch_size, epoch, cfg.seed, stream)


def train_epochs(
    ctx: WorkerContext,
    model: nn.Module,
    step: StepFn,
    schedule: Schedule,
    evaluate: bool = True,
    keep: dict | None = None,
    count: Count | None = None,
) -> int:
    """Run cfg.epochs epochs of `step` over the batches of `schedule`; returns steps done.
    `keep` names what a checkpoint holds besides the random generators (default: the
    model; pass its optimizer too); a resumed run starts after the checkpoint's step.
    `count` names checkpoints in the strategy's own unit (default: steps). Every step event
    carries sim_seconds, the simulated clock at its end (clock.StepClock)."""
    cfg, x, y = ctx.cfg, ctx.data.x_train, ctx.data.y_train
    keep = {"model": model} if keep is None else keep
    resumed = ctx.restore(keep)
    sim = step_clock(ctx)
    done, first, skip = (0, 0, 0) if not resumed else _position(resumed["position"])
    if not resumed:
        ctx.recorder.phase("train", total=cfg.epochs * len(schedule(0)), unit="step")
    for epoch in range(first, cfg.epochs):
        batches = schedule(epoch)
        for i in range(skip if epoch == first else 0, len(batches)):
            index = torch.from_numpy(batches[i]).to(x.device)
            start, moved = time.perf_counter(), bytes_moved(ctx)
            loss, samples, *fields = step(x[index], y[index])
            done += 1
            ctx.maybe_fault(done)
            ctx.check_loss(loss, done)
            now = sim.step(len(index), bytes_moved(ctx) - moved)
            duration = time.perf_counter() - start
            ctx.recorder.step(
                done, loss, samples, duration, epoch=epoch, sim_seconds=now, **dict(*fields)
            )
            if evaluate and cfg.eval_every and done % cfg.eval_every == 0:
                ctx.evaluate(model, step=done, epoch=epoch)
            epoch_eval = evaluate and not cfg.eval_every and i == len(batches) - 1
            if not epoch_eval:  # else after the epoch's evaluation, which it must follow
                save_if_due(ctx, done, keep, epoch, i + 1, count)
        if evaluate and not cfg.eval_every:
            ctx.evaluate(model, step=done, epoch=epoch)
            save_if_due(ctx, done, keep, epoch + 1, 0, count)
    if evaluate and cfg.eval_every and done % cfg.eval_every:
        ctx.evaluate(model, step=done, epoch=cfg.epochs - 1)
    ctx.recorder.phase("train_end", steps=done)
    ctx.save_model(model)
    return done


def step_clock(ctx: WorkerContext) -> StepClock:
    """This rank's step clock; a resumed run goes on from its recorder's simulated time."""
    clock = StepClock(ctx.cfg.system, ctx.world, ctx.rank, ctx.cfg.seed)
    clock.clock.now = ctx.recorder.sim_seconds or 0.0
    return clock


def bytes_moved(ctx: WorkerContext) -> int:
    """Bytes this rank has sent and received so far (0 without a communicator)."""
    comm = ctx.comm
    return 0 if comm is None else comm.bytes_sent + comm.bytes_recv


def _position(position: dict) -> tuple[int, int, int]:
    """(steps done, epoch to go on in, batches of it already done)."""
    return position["done"], position["epoch"], position["batch"]


def save_if_due(
    ctx: WorkerContext, done: int, keep: dict, epoch: int, batch: int, count: Count | None = None
) -> None:
    """A checkpoint when one is due: `batch` batches of `epoch` are done."""
    named = ("step", done) if count is None else count(done)
    if named is not None and ctx.checkpoint_due(named[1]):
        position = {"done": done, "epoch": epoch, "batch": batch}
        ctx.save_checkpoint(named[1], named[0], keep, position)
