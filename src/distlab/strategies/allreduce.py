"""Synchronous data parallel SGD: gradients averaged by one allreduce per step.

Each worker computes the gradient of its share of the batch; the shares are summed with
sample weights (gradient x local samples), so the update equals centralized SGD on the
whole batch (Dean et al. 2012, "Large Scale Distributed Deep Networks", synchronous form).

With compress.kind set, each worker encodes its sample-weighted gradient with the run's
chain (top-k with error feedback: Stich et al. 2018, "Sparsified SGD with Memory"; scaled
sign: Karimireddy et al. 2019; QSGD: Alistarh et al. 2017), the payloads reach every worker
in one all_gather with the loss and sample count appended (strategies/compressed.py), and
every worker decodes and sums them, so the step is the same on every rank.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

from distlab import dpsgd
from distlab.strategies import byzantine
from distlab.strategies.common import StepFn, sampler_schedule, train_epochs
from distlab.strategies.compressed import (
    exchange_bytes,
    gather_sum,
    payload_size,
    refuse_powersgd,
)
from distlab.strategies.spec import (
    StrategySpec,
    check_data_parallel,
    data_parallel_comm,
)
from distlab.training import attach_flat_grads, compute_gradients, make_optimizer

if TYPE_CHECKING:
    from distlab.runtime.context import WorkerContext


class Params(byzantine.RobustParams):
    """Gradient allreduce over one flattened buffer per step (all_gather of each gradient
    under an attack or a robust aggregator: strategies/byzantine.py)."""

    name: Literal["allreduce"] = "allreduce"


def run(ctx: WorkerContext, params: Params) -> None:
    model = ctx.build_model()
    opt = make_optimizer(model.parameters(), ctx.cfg.optimizer)
    buf = attach_flat_grads(model, extra=2)
    chain = ctx.compressor(model)
    keep = {"model": model, "optimizer": opt}
    if ctx.cfg.privacy.mode == "dpsgd":  # clipped sums all-reduced, noise added once
        step, schedule, keep = dpsgd.allreduce(ctx, model, opt)
        return train_epochs(ctx, model, step, schedule, keep=keep)
    if byzantine.active(ctx.cfg, params):
        keep["byzantine"] = byz = byzantine.Byzantine(ctx, ctx.world)
        step = byzantine.gathered_gradient_step(ctx, model, opt, buf, byz)
    elif chain is None:
        step = averaged_gradient_step(ctx, model, opt, buf)
    else:
        step = compressed_gradient_step(ctx, model, opt, buf, chain)
        keep["compress"] = chain  # its error feedback memory
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


def check(cfg) -> None:
    check_data_parallel(cfg)
    refuse_powersgd(cfg, "allreduce")
    byzantine.check_robust(cfg, cfg.workers)


def compressed_gradient_step(ctx: WorkerContext, model, opt, buf: torch.Tensor, chain) -> StepFn:
    """averaged_gradient_step with each worker's sample-weighted gradient compressed by
    `chain`: one all_gather of the payloads (loss and samples appended), every rank decodes
    and sums them, divides by the samples, and steps on chain.aggregate of that mean."""
    grads = buf[:-2]

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        loss = compute_gradients(model, x, y)
        n = float(len(y))
        total, (loss_sum, samples) = gather_sum(ctx.comm, chain, grads * n, [loss * n, n])
        grads.copy_(chain.aggregate(total / samples))
        opt.step()
        return float(loss_sum) / float(samples), int(samples)

    return step


def comm_analysis(cfg, per_rank: dict, params: int, steps: int) -> dict:
    """Dense: one allreduce of P + 2 floats. Compressed: one all_gather per step, so each
    worker moves 2 (N-1) x (payload + 16) bytes (the payload of the chain and the loss and
    samples as float64), next to the dense 2 x P x 4 of an allreduce."""
    out = data_parallel_comm(cfg, per_rank, params, steps)
    if out and cfg.compress.names:
        payload = payload_size(cfg, [(params,)])
        out["bytes_per_step_analytic"] = exchange_bytes(payload, 2, cfg.workers)
        out["ring_wire_bytes_per_step"] = out["bytes_per_step_analytic"]
    return out


SPEC = StrategySpec(
    "allreduce",
    Params,
    run,
    check=check,
    comm_analysis=comm_analysis,
    check_data=dpsgd.check_data,
    threats=frozenset({"attack", "dpsgd"}),
)
