"""How far decentralized workers are from agreeing, and what measuring it costs.

Two counted allreduces: one builds the average model x_bar (with the step's loss and sample
count riding along), a second the consensus distance mean_i ||x_i - x_bar|| (Boyd et al.
2006, "Randomized gossip algorithms": how fast it shrinks is set by the spectral gap of W).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from distlab.training import flat_params, set_flat_params

if TYPE_CHECKING:
    from distlab.runtime.context import WorkerContext


def measure(
    ctx: WorkerContext, model: nn.Module, average: nn.Module, loss: float, n: int
) -> tuple[float, float, int]:
    """The workers' average model into `average`, then the consensus distance. Returns the
    workers' sample-weighted mean loss of this step (this rank's: `loss` over `n` samples),
    the distance and the bytes this rank counted for both."""
    comm, world, own = ctx.comm, ctx.world, flat_params(model)
    before = comm.bytes_sent + comm.bytes_recv
    msg = torch.cat([own, torch.tensor([loss * n, float(n)])])
    comm.all_reduce(msg)
    mean = msg[:-2] / world
    set_flat_params(average, mean.clone())
    distance = torch.tensor([float(torch.linalg.vector_norm(own - mean))])
    comm.all_reduce(distance)
    moved = comm.bytes_sent + comm.bytes_recv - before
    return float(msg[-2]) / float(msg[-1]), float(distance[0]) / world, moved


def measurement_bytes(params: int) -> int:
    """What one rank counts for one measurement: the allreduce of its P parameters with the
    step's loss and sample count (P + 2 float32, handed in and got back), and that of its
    distance to the average (one float32)."""
    return 2 * (params + 2) * 4 + 2 * 4
