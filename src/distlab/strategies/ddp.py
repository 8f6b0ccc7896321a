"""PyTorch DistributedDataParallel: bucketed gradient allreduce overlapped with backward.

DDP (Li et al. 2020, "PyTorch Distributed: Experiences on Accelerating Data Parallel
Training") averages gradients over ranks; its traffic is counted by a comm hook that wraps
the default allreduce (or the fp16 compression hook).

compress.kind picks the hook: fp16 or bf16 cast each bucket (DDP's fp16_compress_hook and
bf16_compress_hook, through the communicator); powersgd runs PyTorch's own PowerSGD hook
(Vogels et al. 2019) with its allreduces counted; any other compressor encodes each bucket
with a chain and exchanges the payloads in one all_gather (strategies/compressed.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field
from torch.nn.parallel import DistributedDataParallel

from distlab.strategies.common import sampler_schedule, train_epochs
from distlab.strategies.compressed import (
    exchange_bytes,
    payload_size,
    register_ddp_compression,
)
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
    names = cfg.compress.names
    if cfg.strategy.fp16 and names and names != ["fp16"]:
        raise ValueError(
            f"strategy.fp16 and compress.kind={cfg.compress.kind} both set DDP's comm hook; "
            "keep one (compress.kind=fp16 is strategy.fp16)"
        )
    if len(names) > 1 and names[0] == "powersgd":
        raise ValueError(
            f"compress.kind={names} on ddp: PyTorch's PowerSGD hook takes no cast after it; "
            "use compress.kind=powersgd"
        )


def run(ctx: WorkerContext, params: Params) -> None:
    base = ctx.build_model()
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    model = DistributedDataParallel(base, device_ids=ids, bucket_cap_mb=params.bucket_mb)
    if ctx.cfg.compress.names != ["powersgd"]:  # PowerSGD's hook records its own sizes
        ctx.compressor(base)  # records the chain's sizes for the summary
    hook_state = register_ddp_compression(ctx, model, params.fp16)
    opt = make_optimizer(model.parameters(), ctx.cfg.optimizer)

    def step(x, y):
        loss = compute_gradients(model, x, y)
        opt.step()
        # The log wants the global mean loss; one small counted allreduce gives it.
        stats = torch.tensor([loss * len(y), float(len(y))], device=x.device)
        ctx.comm.all_reduce(stats)
        return float(stats[0] / stats[1]), int(stats[1])

    keep = {"model": base, "optimizer": opt}
    if hook_state is not None:
        keep["compress"] = hook_state  # error feedback, PowerSGD's warm start
    train_epochs(ctx, base, step, sampler_schedule(ctx, ctx.rank, ctx.world), keep=keep)


def comm_analysis(cfg, per_rank: dict, params: int, steps: int) -> dict:
    """Per worker per step, besides the 16 bytes of the loss allreduce: fp16 and bf16 halve
    what travels (the payload and the ring's wire bytes). A chain's buckets go by all_gather,
    2 (N-1) x payload (one bucket of P values, as a small model has). PowerSGD allreduces
    the whole bucket for its first 2 steps, then per step sum((n + m) r) factors plus the
    tensors it leaves uncompressed (powersgd_summary, from the shapes the lead recorded)."""
    out = data_parallel_comm(cfg, per_rank, params, steps)
    names = cfg.compress.names
    if not out:
        return out
    if cfg.strategy.fp16 or names[:1] in (["fp16"], ["bf16"]):
        out["bytes_per_step_analytic"] //= 2
        out["ring_wire_bytes_per_step"] = round(out["ring_wire_bytes_per_step"] / 2, 1)
    elif names and names[0] != "powersgd":  # powersgd's needs the shapes: powersgd_summary
        analytic = exchange_bytes(payload_size(cfg, [(params,)]), 0, cfg.workers)
        out["bytes_per_step_analytic"] = out["ring_wire_bytes_per_step"] = analytic
    return out


def powersgd_summary(cfg, lead: list[dict]) -> dict:
    """PowerSGD's analytic bytes per worker per step, averaged over the run: the first
    start_iter steps allreduce all P values, the others `numel_per_step` (2 x that x 4
    bytes counted, sent and received; a ring's wire 2 (N-1)/N x that x 4)."""
    event = next((e for e in lead if e.get("phase") == "powersgd"), None)
    steps = sum(1 for e in lead if e["kind"] == "step")
    if event is None or not steps or cfg.workers == 1:
        return {}
    dense = min(steps, event["start_iter"])
    numel = (dense * event["dense_numel"] + (steps - dense) * event["numel_per_step"]) / steps
    n = cfg.workers
    return {
        "bytes_per_step_analytic": round(2 * 4 * numel, 1),
        "ring_wire_bytes_per_step": round(2 * (n - 1) / n * 4 * numel, 1),
        "powersgd_ratio": round(event["dense_numel"] / event["numel_per_step"], 2),
        # what the hook really sends once past its dense start, not a generic chain's size
        "compressors": ["powersgd"],
        "compression_ratio": round(event["dense_numel"] / event["numel_per_step"], 2),
    }


SPEC = StrategySpec(
    "ddp", Params, run, check=check, comm_analysis=comm_analysis, extra_summary=powersgd_summary
)
