"""The step loop every pipeline schedule shares, and how the lead gets the whole model."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import nn

from distlab.strategies.common import sampler_schedule
from distlab.strategies.pipeline.split import (
    Plan,
    balanced_plan,
    boundary_shapes,
    cut_elements,
    declared_plan,
    layer_params,
    layer_seconds,
    split_points,
    stage_module,
)

if TYPE_CHECKING:
    from distlab.runtime.context import WorkerContext

# step(indices) -> the batch's mean loss (NaN on a rank that does not compute it)
PipeStep = Callable[[np.ndarray], float]
# sync_eval(step=, epoch=): every rank that takes part in an evaluation calls it at once
SyncEval = Callable[..., None]


def microbatch_count(batch: int, wanted: int) -> int:
    """`wanted` microbatches when they divide the batch, else the largest count that does
    (a last, smaller batch of an epoch): equal microbatches keep the mean of the microbatch
    losses the mean of the batch, so gradients stay those of the whole batch."""
    return max(m for m in range(1, min(wanted, batch) + 1) if batch % m == 0)


def train_loop(ctx: WorkerContext, step: PipeStep, sync_eval: SyncEval, keep: Keep) -> int:
    """cfg.epochs epochs over the whole training set in global batches (the sampler with one
    replica: every stage sees every sample), evaluating at the run's cadence. A checkpoint
    is due every checkpoint.every steps (optimizer steps on the global batch); `keep`
    restores one on a resumed run and writes them, and the run goes on after its step."""
    cfg = ctx.cfg
    schedule = sampler_schedule(ctx, 0, 1)
    resumed = keep.restore()
    done, first, skip = (0, 0, 0) if resumed is None else position_of(resumed)
    if resumed is None:
        ctx.recorder.phase("train", total=cfg.epochs * len(schedule(0)), unit="step")
    for epoch in range(first, cfg.epochs):
        batches = schedule(epoch)
        for i in range(skip if epoch == first else 0, len(batches)):
            idx = batches[i]
            begin = time.perf_counter()
            loss = step(idx)
            done += 1
            ctx.maybe_fault(done)
            if ctx.is_lead:
                ctx.check_loss(loss, done)
            ctx.recorder.step(done, loss, len(idx), time.perf_counter() - begin, epoch=epoch)
            if cfg.eval_every and done % cfg.eval_every == 0:
                sync_eval(step=done, epoch=epoch)
            if cfg.eval_every or i < len(batches) - 1:  # else after the epoch's evaluation
                save_if_due(ctx, keep, done, epoch, i + 1)
        if not cfg.eval_every:
            sync_eval(step=done, epoch=epoch)
            save_if_due(ctx, keep, done, epoch + 1, 0)
    if cfg.eval_every and done % cfg.eval_every:
        sync_eval(step=done, epoch=cfg.epochs - 1)
    return done


class Keep(Protocol):
    """What a schedule's checkpoint holds and where it goes: `restore` loads the resumed
    checkpoint (every rank's part of it) and returns its position, None on a fresh start;
    `save` writes every rank's file for the same step."""

    def restore(self) -> dict | None: ...

    def save(self, at: int, position: dict) -> None: ...


def position_of(position: dict) -> tuple[int, int, int]:
    """(steps done, epoch to go on in, batches of it already done)."""
    return position["done"], position["epoch"], position["batch"]


def save_if_due(ctx: WorkerContext, keep: Keep, done: int, epoch: int, batch: int) -> None:
    """Every rank walks the same steps, so every rank finds the same checkpoints due."""
    if ctx.checkpoint_due(done):
        keep.save(done, {"done": done, "epoch": epoch, "batch": batch})


def resumed_cuts(ctx: WorkerContext) -> tuple[int, ...] | None:
    """The cuts of the run a checkpoint was taken in: under split=time a new measurement
    could cut elsewhere, and the stages' saved parameters fit only the old cuts."""
    if not ctx.resuming:
        return None
    return tuple(ctx.checkpoints.resumed["extra"]["cuts"])


def flat_of(model: nn.Module, names: list[str]) -> torch.Tensor:
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach().reshape(-1) for n in names])


def load_flat(model: nn.Module, names: list[str], flat: torch.Tensor) -> None:
    """Write one stage's parameters, as `flat_of` packed them, into the full model."""
    params, offset = dict(model.named_parameters()), 0
    with torch.no_grad():
        for name in names:
            p = params[name]
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def make_plan(ctx: WorkerContext, split: str, microbatches: int, layers: list[nn.Module]) -> Plan:
    """The run's cuts: the model's declared ones, or the ones that balance parameter counts
    or forward-plus-backward seconds on one microbatch."""
    stages = ctx.cfg.workers
    if split == "declared":
        return declared_plan(split_points(ctx.cfg.model), stages)
    if split == "params":
        return balanced_plan(layer_params(layers), stages)
    size = max(1, ctx.cfg.batch_size // microbatches)
    return balanced_plan(layer_seconds(layers, ctx.data.x_train[:size]), stages)


def agree_plan(ctx: WorkerContext, split: str, microbatches: int, layers: list) -> Plan:
    """The same cuts on every rank: timings differ from process to process, so under
    split=time rank 0 measures and broadcasts its cuts; a resumed run keeps its own."""
    saved = resumed_cuts(ctx)
    if saved is not None:
        return Plan(saved, len(layers))
    if split != "time":
        return make_plan(ctx, split, microbatches, layers)
    stages = ctx.cfg.workers
    cuts = torch.zeros(max(stages - 1, 1), dtype=torch.int64)
    if ctx.rank == 0:
        cuts[: stages - 1] = torch.tensor(make_plan(ctx, split, microbatches, layers).cuts)
    ctx.comm.broadcast(cuts, 0)
    return Plan(tuple(int(c) for c in cuts[: stages - 1]), len(layers))


def plan_record(model: nn.Module, layers: list, plan: Plan, sample: tuple) -> dict:
    """What the lead writes about the split: the cuts, each stage's parameters, and the
    elements per sample crossing each cut (the analytic bytes' input)."""
    modules = [stage_module(layers, b) for b in plan.bounds]
    return {
        "cuts": list(plan.cuts),
        "stage_params": [sum(p.numel() for p in m.parameters()) for m in modules],
        "cut_elements": cut_elements(boundary_shapes(layers, sample), plan),
    }
