"""Parameter server: rank 0 holds the model, ranks 1..N compute gradients.

Synchronous mode waits for every worker each step and applies the sample-weighted mean
gradient, which makes it the same computation as centralized SGD. Asynchronous mode applies
each worker's gradient as it arrives, as in Downpour SGD (Dean et al. 2012); a gradient
computed on parameters more than `max_staleness` versions old is dropped (bounded staleness,
Ho et al. 2013, "More Effective Distributed ML via a Stale Synchronous Parallel Parameter
Server").
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from distlab.strategies.common import sampler_schedule, train_epochs
from distlab.strategies.spec import StrategyBase, StrategySpec, check_data_parallel
from distlab.training import (
    compute_gradients,
    flat_grads,
    flat_params,
    make_optimizer,
    set_flat_grads,
    set_flat_params,
)

if TYPE_CHECKING:
    from distlab.runtime.context import WorkerContext

SERVER = 0
# Trailer appended to each gradient message: weighted loss, samples, parameter version.
TRAILER = 3


class Params(StrategyBase):
    """One server process plus N worker processes."""

    name: Literal["param-server"] = "param-server"
    mode: Literal["sync", "async"] = "sync"
    """sync: wait for all workers each step; async: apply each gradient as it arrives."""
    max_staleness: int | None = Field(None, ge=0)
    """Async only: drop gradients computed on parameters more than this many versions old."""


def processes(cfg) -> int:
    return cfg.workers + 1


def role(cfg, rank: int) -> str:
    return "server" if rank == SERVER else "worker"


def check(cfg) -> None:
    check_data_parallel(cfg)
    if cfg.strategy.max_staleness is not None and cfg.strategy.mode == "sync":
        raise ValueError("strategy.max_staleness applies to mode 'async' only (mode is 'sync')")


def run(ctx: WorkerContext, params: Params) -> None:
    model = ctx.build_model()
    if ctx.rank == SERVER:
        serve(ctx, model, params)
    else:
        work(ctx, model)


# --- worker ------------------------------------------------------------------------------------


def work(ctx: WorkerContext, model) -> None:
    version = torch.zeros(1)
    incoming = torch.empty(flat_params(model).numel() + 1)

    def step(x, y):
        loss = compute_gradients(model, x, y)
        n = float(len(y))
        trailer = torch.tensor([loss * n, n, float(version)])
        ctx.comm.send(torch.cat([flat_grads(model) * n, trailer]), SERVER)
        ctx.comm.recv(incoming, SERVER)
        set_flat_params(model, incoming[:-1])
        version.fill_(incoming[-1])
        return loss, len(y)

    schedule = sampler_schedule(ctx, ctx.rank - 1, ctx.world - 1)
    train_epochs(ctx, model, step, schedule, evaluate=False)


# --- server ------------------------------------------------------------------------------------


def serve(ctx: WorkerContext, model, params: Params) -> None:
    cfg = ctx.cfg
    opt = make_optimizer(model.parameters(), cfg.optimizer)
    workers = ctx.world - 1
    per_worker = cfg.epochs * len(sampler_schedule(ctx, 0, workers)(0))
    sync = params.mode == "sync"
    total = per_worker if sync else per_worker * workers
    ctx.recorder.phase("train", total=total, unit="step")
    state = {"version": 0, "epoch_len": total // cfg.epochs}
    for step in range(1, total + 1):
        start = time.perf_counter()
        if sync:
            loss, samples = sync_update(ctx, model, opt, workers, state)
            extra = {}
        else:
            loss, samples, extra = async_update(ctx, model, opt, params, state)
        ctx.recorder.step(
            step,
            loss,
            samples,
            time.perf_counter() - start,
            epoch=(step - 1) // state["epoch_len"],
            **extra,
        )
        maybe_evaluate(ctx, model, step, state["epoch_len"])
    ctx.recorder.phase("train_end", steps=total)
    ctx.save_model(model)


def maybe_evaluate(ctx: WorkerContext, model, step: int, epoch_len: int) -> None:
    every = ctx.cfg.eval_every or epoch_len
    if step % every == 0 or step == epoch_len * ctx.cfg.epochs:
        ctx.evaluate(model, step=step, epoch=(step - 1) // epoch_len)


def sync_update(ctx, model, opt, workers: int, state: dict) -> tuple[float, int]:
    size = flat_params(model).numel() + TRAILER
    total = torch.zeros(size)
    buf = torch.empty(size)
    for src in range(1, workers + 1):
        ctx.comm.recv(buf, src)
        total += buf
    apply_gradient(model, opt, total[:-TRAILER] / total[-2])
    state["version"] += 1
    reply = with_version(model, state["version"])
    for dst in range(1, workers + 1):
        ctx.comm.send(reply, dst)
    return float(total[-3] / total[-2]), int(total[-2])


def async_update(ctx, model, opt, params: Params, state: dict):
    buf = torch.empty(flat_params(model).numel() + TRAILER)
    src = ctx.comm.recv(buf)
    staleness = state["version"] - int(buf[-1])
    stale = params.max_staleness is not None and staleness > params.max_staleness
    if not stale:
        apply_gradient(model, opt, buf[:-TRAILER] / buf[-2])
        state["version"] += 1
    ctx.comm.send(with_version(model, state["version"]), src)
    extra = {"worker": src, "staleness": staleness, "dropped": stale}
    return float(buf[-3] / buf[-2]), int(buf[-2]), extra


def apply_gradient(model, opt, grad: torch.Tensor) -> None:
    set_flat_grads(model, grad)
    opt.step()


def with_version(model, version: int) -> torch.Tensor:
    return torch.cat([flat_params(model), torch.tensor([float(version)])])


def comm_analysis(cfg, per_rank: dict, params: int, units: int) -> dict:
    """Per worker per step: gradients up plus parameters down, 2 * P * 4 bytes; the server
    carries N times that."""
    steps = units if cfg.strategy.mode == "sync" else units / cfg.workers
    workers = [v for r, v in per_rank.items() if r != str(SERVER)]
    measured = sum(w["bytes_sent"] + w["bytes_recv"] for w in workers) / max(len(workers), 1)
    server = per_rank.get(str(SERVER), {})
    return {
        "bytes_per_step_measured": round(measured / steps, 1),
        "bytes_per_step_analytic": 2 * params * 4,
        "server_bytes_per_step_measured": round(
            (server.get("bytes_sent", 0) + server.get("bytes_recv", 0)) / steps, 1
        ),
        "server_bytes_per_step_analytic": 2 * params * 4 * cfg.workers,
    }


def stale_summary(cfg, lead: list[dict]) -> dict:
    """Async mode: how many gradients were dropped as too stale, and the worst staleness."""
    if cfg.strategy.mode != "async":
        return {}
    steps = [e for e in lead if e["kind"] == "step"]
    return {
        "stale_gradients_dropped": sum(1 for e in steps if e.get("dropped")),
        "max_staleness_seen": max((e.get("staleness", 0) for e in steps), default=None),
    }


SPEC = StrategySpec(
    "param-server",
    Params,
    run,
    processes=processes,
    role=role,
    check=check,
    comm_analysis=comm_analysis,
    extra_summary=stale_summary,
)
