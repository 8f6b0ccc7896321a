"""Synchronous data parallel SGD: gradients averaged by one allreduce per step.

Each worker computes the gradient of its share of the batch; the shares are summed with
sample weights (gradient x local samples), so the update equals centralized SGD on the
whole batch (Dean et al. 2012, "Large Scale Distributed Deep Networks", synchronous form).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

from distlab.strategies.common import (
    StrategyBase,
    data_parallel_comm,
    one_worker_per_rank,
    train_epochs,
)
from distlab.training import compute_gradients, flat_grads, make_optimizer, set_flat_grads

if TYPE_CHECKING:
    from distlab.runtime.context import WorkerContext


class Params(StrategyBase):
    """Gradient allreduce over one flattened buffer per step."""

    name: Literal["allreduce"] = "allreduce"


processes = one_worker_per_rank


def role(cfg, rank: int) -> str:
    return "worker"


def run(ctx: WorkerContext, params: Params) -> None:
    model = ctx.build_model()
    opt = make_optimizer(model.parameters(), ctx.cfg.optimizer)

    def step(x, y):
        loss = compute_gradients(model, x, y)
        n = float(len(y))
        # One message per step: weighted gradients, then the weighted loss and the count.
        extra = torch.tensor([loss * n, n], dtype=torch.float32, device=x.device)
        buf = torch.cat([flat_grads(model) * n, extra])
        ctx.comm.all_reduce(buf)
        total = buf[-1]
        set_flat_grads(model, buf[:-2] / total)
        opt.step()
        return float(buf[-2] / total), int(total)

    train_epochs(ctx, model, step, ctx.rank, ctx.world)


def comm_analysis(cfg, per_rank: dict, params: int, steps: int) -> dict:
    return data_parallel_comm(cfg, per_rank, params, steps)
