"""Pieces the data-parallel strategies share: the epoch loop and the Params base."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from distlab.data.samplers import epoch_batches

if TYPE_CHECKING:
    from distlab.runtime.context import WorkerContext

# step(x, y) -> (mean loss over the global batch, global samples) after one synchronized update
StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[float, int]]


class StrategyBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


def steps_per_epoch(ctx: WorkerContext, rank: int, world: int) -> int:
    return len(
        epoch_batches(
            ctx.cfg.sampler, ctx.labels(), ctx.cfg.batch_size, 0, ctx.cfg.seed, rank, world
        )
    )


def train_epochs(
    ctx: WorkerContext, model: nn.Module, step: StepFn, rank: int, world: int, evaluate: bool = True
) -> int:
    """Run cfg.epochs epochs of `step` over this rank's sampler batches; returns steps done."""
    cfg, x, y = ctx.cfg, ctx.data.x_train, ctx.data.y_train
    total = cfg.epochs * steps_per_epoch(ctx, rank, world)
    ctx.recorder.phase("train", total=total, unit="step")
    done = 0
    for epoch in range(cfg.epochs):
        batches = epoch_batches(
            cfg.sampler, ctx.labels(), cfg.batch_size, epoch, cfg.seed, rank, world
        )
        for idx in batches:
            index = torch.from_numpy(idx).to(x.device)
            start = time.perf_counter()
            loss, samples = step(x[index], y[index])
            done += 1
            ctx.maybe_fault(done)
            ctx.recorder.step(done, loss, samples, time.perf_counter() - start, epoch=epoch)
            if evaluate and cfg.eval_every and done % cfg.eval_every == 0:
                ctx.evaluate(model, step=done, epoch=epoch)
        if evaluate and not cfg.eval_every:
            ctx.evaluate(model, step=done, epoch=epoch)
    if evaluate and cfg.eval_every and done % cfg.eval_every:
        ctx.evaluate(model, step=done, epoch=cfg.epochs - 1)
    ctx.recorder.phase("train_end", steps=done)
    ctx.save_model(model)
    return done


def worker_role(cfg, rank: int) -> str:
    """Every rank trains: the role of each process of a data-parallel strategy."""
    return "worker"


def single_process(cfg) -> int:
    return 1


def one_worker_per_rank(cfg) -> int:
    return cfg.workers


def data_parallel_comm(cfg, per_rank: dict, params: int, steps: int) -> dict:
    """Measured payload per worker per step next to the analytic 2 * P * 4 bytes, and the
    wire bytes a ring allreduce would send: 2 (N-1)/N * P * 4 per worker per step."""
    workers = [v for v in per_rank.values()]
    measured = sum(w["bytes_sent"] + w["bytes_recv"] for w in workers) / max(len(workers), 1)
    n = cfg.workers
    return {
        "bytes_per_step_measured": round(measured / steps, 1),
        "bytes_per_step_analytic": 2 * params * 4,
        "ring_wire_bytes_per_step": round(2 * (n - 1) / n * params * 4, 1),
    }


def sampler_partition(cfg, labels):
    """What each worker trains on in the first epoch, as a Partition (for partition.json)."""
    import numpy as np

    from distlab.data.partition import Partition, count_classes

    parts = [
        np.concatenate(
            epoch_batches(cfg.sampler, labels, cfg.batch_size, 0, cfg.seed, r, cfg.workers)
        )
        for r in range(cfg.workers)
    ]
    return Partition(parts, count_classes(labels, parts, int(labels.max()) + 1))
