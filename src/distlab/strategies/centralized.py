"""Centralized SGD: one process, the whole dataset, the baseline every paradigm is held to."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from distlab.strategies.common import StrategyBase, single_process, train_epochs, worker_role
from distlab.training import compute_gradients, make_optimizer

if TYPE_CHECKING:
    from distlab.runtime.context import WorkerContext


class Params(StrategyBase):
    """Plain minibatch SGD in one process."""

    name: Literal["centralized"] = "centralized"


processes = single_process


role = worker_role


def check(cfg) -> None:
    if cfg.workers != 1:
        raise ValueError(
            f"strategy centralized runs one process; --workers must be 1 (got {cfg.workers}); "
            "use --strategy allreduce for data parallel"
        )


def run(ctx: WorkerContext, params: Params) -> None:
    model = ctx.build_model()
    opt = make_optimizer(model.parameters(), ctx.cfg.optimizer)

    def step(x, y):
        loss = compute_gradients(model, x, y)
        opt.step()
        return loss, len(y)

    train_epochs(ctx, model, step, rank=0, world=1)
