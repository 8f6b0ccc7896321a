"""Synchronous data parallel SGD: gradients averaged by one allreduce per step.

Each worker computes the gradient of its share of the batch; the shares are summed with
sample weights (gradient x local samples), so the update equals centralized SGD on the
whole batch (Dean et al. 2012, "Large Scale Distributed Deep Networks", synchronous form).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

from distlab.strategies.common import StepFn, sampler_schedule, train_epochs
from distlab.strategies.spec import StrategyBase, StrategySpec
from distlab.training import attach_flat_grads, compute_gradients, make_optimizer

if TYPE_CHECKING:
    from distlab.runtime.context import WorkerContext


class Params(StrategyBase):
    """Gradient allreduce over one flattened buffer per step."""

    name: Literal["allreduce"] = "allreduce"


def run(ctx: WorkerContext, params: Params) -> None:
    model = ctx.build_model()
    opt = make_optimizer(model.parameters(), ctx.cfg.optimizer)
    step = averaged_gradient_step(ctx, model, opt, attach_flat_grads(model, extra=2))
    keep = {"model": model, "optimizer": opt}
    train_epochs(ctx, model, step, sampler_schedule(ctx, ctx.rank, ctx.world), keep=keep)


def averaged_gradient_step(ctx: WorkerContext, model, opt, buf: torch.Tensor) -> StepFn:
    """One synchronous step: the sample-weighted mean gradient of all workers, then the
    optimizer. `buf` is the flat buffer backward writes the gradients into (attach_flat_grads
    with 2 extra slots), so one message carries them, the weighted loss and the sample
    count. Returns the workers' mean loss and their samples."""
    grads = buf[:-2]

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        loss = compute_gradients(model, x, y)
        n = float(len(y))
        grads.mul_(n)
        buf[-2], buf[-1] = loss * n, n
        ctx.comm.all_reduce(buf)
        total = float(buf[-1])
        grads.div_(total)
        opt.step()
        return float(buf[-2]) / total, int(total)

    return step


SPEC = StrategySpec("allreduce", Params, run)
