"""Centralized SGD: one process, the whole dataset, the baseline every paradigm is held to."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from distlab import dpsgd
from distlab.strategies.common import local_step, sampler_schedule, train_epochs
from distlab.strategies.spec import StrategyBase, StrategySpec, single_process
from distlab.training import make_optimizer

if TYPE_CHECKING:
    from distlab.runtime.context import WorkerContext


class Params(StrategyBase):
    """Plain minibatch SGD in one process."""

    name: Literal["centralized"] = "centralized"


def check(cfg) -> None:
    if cfg.workers != 1:
        raise ValueError(
            f"strategy centralized runs one process; --workers must be 1 (got {cfg.workers}); "
            "use --strategy allreduce for data parallel"
        )


def run(ctx: WorkerContext, params: Params) -> None:
    model = ctx.build_model()
    opt = make_optimizer(model.parameters(), ctx.cfg.optimizer)
    keep = {"model": model, "optimizer": opt}
    step, schedule = local_step(model, opt), sampler_schedule(ctx, 0, 1)
    if ctx.cfg.privacy.mode == "dpsgd":  # Opacus's per-sample clipping, noise and sampling
        step, schedule, keep = dpsgd.centralized(ctx, model, opt)
    train_epochs(ctx, model, step, schedule, keep=keep)


SPEC = StrategySpec(
    "centralized",
    Params,
    run,
    processes=single_process,
    check=check,
    check_data=dpsgd.check_data,
    network=None,
    no_network="one process exchanges nothing: there is no network to model",
    no_compression="one process sends nothing to compress",
    threats=frozenset({"dpsgd"}),
)
