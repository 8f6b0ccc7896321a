"""PyTorch DistributedDataParallel: bucketed gradient allreduce overlapped with backward.

DDP (Li et al. 2020, "PyTorch Distributed: Experiences on Accelerating Data Parallel
Training") averages gradients over ranks; its traffic is counted by a comm hook that wraps
the default allreduce (or the fp16 compression hook).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field
from torch.nn.parallel import DistributedDataParallel

from distlab.strategies.common import sampler_schedule, train_epochs
from distlab.strategies.spec import (
    StrategyBase,
    StrategySpec,
    check_data_parallel,
    data_parallel_comm,
)
from distlab.training import compute_gradients, make_optimizer

if TYPE_CHECKING:
    from distlab.runtime.context import WorkerContext


class Params(StrategyBase):
    """torch DistributedDataParallel with a counted comm hook."""

    name: Literal["ddp"] = "ddp"
    bucket_mb: float = Field(25.0, gt=0)
    """Gradient bucket size in MB (DDP's bucket_cap_mb)."""
    fp16: bool = False
    """Compress gradients to fp16 for the allreduce (DDP's fp16_compress_hook)."""


def check(cfg) -> None:
    check_data_parallel(cfg)
    if cfg.sampler == "split-batch" and cfg.batch_size % cfg.workers:
        raise ValueError(
            f"ddp averages ranks equally, so under split-batch --batch-size must be a multiple "
            f"of --workers (got {cfg.batch_size} and {cfg.workers})"
        )


def run(ctx: WorkerContext, params: Params) -> None:
    base = ctx.build_model()
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    model = DistributedDataParallel(base, device_ids=ids, bucket_cap_mb=params.bucket_mb)
    model.register_comm_hook(None, ctx.comm.ddp_hook(compress=params.fp16))
    opt = make_optimizer(model.parameters(), ctx.cfg.optimizer)

    def step(x, y):
        loss = compute_gradients(model, x, y)
        opt.step()
        # The log wants the global mean loss; one small counted allreduce gives it.
        stats = torch.tensor([loss * len(y), float(len(y))], device=x.device)
        ctx.comm.all_reduce(stats)
        return float(stats[0] / stats[1]), int(stats[1])

    keep = {"model": base, "optimizer": opt}
    train_epochs(ctx, base, step, sampler_schedule(ctx, ctx.rank, ctx.world), keep=keep)


def comm_analysis(cfg, per_rank: dict, params: int, steps: int) -> dict:
    """fp16 compression halves what travels: the payload and the ring's wire bytes."""
    out = data_parallel_comm(cfg, per_rank, params, steps)
    if cfg.strategy.fp16:
        out["bytes_per_step_analytic"] //= 2
        out["ring_wire_bytes_per_step"] = round(out["ring_wire_bytes_per_step"] / 2, 1)
    return out


SPEC = StrategySpec("ddp", Params, run, check=check, comm_analysis=comm_analysis)
