"""Workers that walk their own data in lock-step (local SGD, gossip).

With the IID partition every worker walks the run's --sampler share; with a non-IID
--partition each worker walks its own part. Either way every worker takes the same number
of steps per epoch, otherwise a rank would wait forever at an averaging or a gossip round.
Each rank builds every worker's schedule from the seed (no messages), to know the global
samples of a step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from distlab.data.partition import Partition, partition
from distlab.strategies.common import Schedule, own_schedule, sampler_schedule
from distlab.strategies.spec import sampler_batch_meaning, sampler_partition

if TYPE_CHECKING:
    from distlab.config import RunConfig
    from distlab.runtime.context import WorkerContext


def own_parts(cfg: RunConfig, labels: np.ndarray) -> Partition:
    """The non-IID --partition over the workers; a worker without data is refused."""
    parts = partition(labels, cfg.workers, cfg.partition, cfg.seed)
    empty = [r for r, p in enumerate(parts.indices) if len(p) == 0]
    if empty:
        raise ValueError(
            f"--partition {cfg.partition.scheme} leaves worker {empty[0]} without samples; "
            "change its parameters or --seed"
        )
    return parts


def cycled_schedule(ctx: WorkerContext, indices: np.ndarray, rank: int, steps: int) -> Schedule:
    """A worker's own part cut into exactly `steps` batches per epoch. The largest part sets
    `steps`; a smaller part starts another reshuffled pass over its own data (a stream of
    its own per pass) until it has that many, so every worker reaches every averaging."""
    own = -(-len(indices) // ctx.cfg.batch_size)
    world = ctx.cfg.workers
    passes = [own_schedule(ctx, indices, rank + p * world) for p in range(-(-steps // own))]
    return lambda epoch: [b for one in passes for b in one(epoch)][:steps]


def cycled_schedules(ctx: WorkerContext, parts: list[np.ndarray]) -> list[Schedule]:
    """Every worker's own part, cycled to the step count of the largest one."""
    steps = max(-(-len(p) // ctx.cfg.batch_size) for p in parts)
    return [cycled_schedule(ctx, p, r, steps) for r, p in enumerate(parts)]


def worker_schedules(ctx: WorkerContext) -> list[Schedule]:
    """Every worker's schedule: the sampler's shares (IID) or the workers' own parts."""
    cfg, world = ctx.cfg, ctx.cfg.workers
    if cfg.partition.scheme == "iid":
        return [sampler_schedule(ctx, r, world) for r in range(world)]
    parts = ctx.partition  # the workers' own parts, computed once by the launching process
    if parts is None:
        parts = own_parts(cfg, ctx.labels())
    return cycled_schedules(ctx, parts.indices)


def global_samples(schedules: list[Schedule], epochs: int) -> list[int]:
    """Per step of the run, the samples of all workers' batches together."""
    sizes = []
    for epoch in range(epochs):
        per_worker = [[len(b) for b in s(epoch)] for s in schedules]
        sizes.extend(sum(step) for step in zip(*per_worker, strict=True))
    return sizes


def data_partition(cfg: RunConfig, labels: np.ndarray) -> Partition:
    """The workers' own parts under a non-IID --partition, else the sampler's first epoch."""
    if cfg.partition.scheme == "iid":
        return sampler_partition(cfg, labels)
    return own_parts(cfg, labels)


def batch_meaning(cfg: RunConfig) -> str:
    if cfg.partition.scheme != "iid":
        return "per worker (its own part)"
    return sampler_batch_meaning(cfg)
