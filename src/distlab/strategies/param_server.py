"""Parameter server: rank 0 holds the model, ranks 1..N compute gradients.

Synchronous mode waits for every worker each step and applies the sample-weighted mean
gradient, which makes it the same computation as centralized SGD. Asynchronous mode applies
each worker's gradient as it arrives, as in Downpour SGD (Dean et al. 2012); a gradient
computed on parameters more than `max_staleness` versions old is dropped (bounded staleness,
Ho et al. 2013, "More Effective Distributed ML via a Stale Synchronous Parallel Parameter
Server").

Checkpoints (--set checkpoint.every=...) count the server's steps (updates, the unit of its
events and the summary). The server writes its model, optimizer and version counter; a
worker its copy of the parameters and their version. Synchronous mode is deterministic: a
resumed run ends bit for bit where an uninterrupted one does, and needs no extra call (the
ranks are within one step of each other). Asynchronous mode applies the gradients in the
order they arrive, which differs from run to run (with more than one worker), so two runs
with one seed differ already. Its checkpoint is a consistent cut: it is taken where every
worker has done the same number k of steps, at server step N x k, so at the server steps
that are multiples of both `every` and the N workers. Each worker waits there at a barrier
(0 bytes, one counted call per rank that a run without checkpoints does not make) until the
server has written its own, so no gradient is in flight and no worker runs ahead. A resumed
asynchronous run goes on from the checkpoint's version.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from distlab.strategies import byzantine, ps_compress
from distlab.strategies.common import Count, sampler_schedule, train_epochs
from distlab.strategies.spec import StrategySpec, check_data_parallel
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


class Params(byzantine.RobustParams):
    """One server process plus N worker processes (Byzantine workers and the server's
    robust rule: strategies/byzantine.py)."""

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
    byzantine.check_robust(cfg, cfg.workers)
    if cfg.strategy.max_staleness is not None and cfg.strategy.mode == "sync":
        raise ValueError("strategy.max_staleness applies to mode 'async' only (mode is 'sync')")
    if cfg.compress.downlink and "majority" in cfg.compress.names:
        raise ValueError(
            "compress.kind=majority cannot carry param-server's downlink: signs without a "
            "scale cannot carry a difference of parameters (use sign, or compress.downlink=false)"
        )


def run(ctx: WorkerContext, params: Params) -> None:
    model = ctx.build_model()
    if ctx.rank == SERVER:
        serve(ctx, model, params)
    else:
        work(ctx, model, params)


# --- worker ------------------------------------------------------------------------------------


class ServerCopy:
    """A worker's copy of the server's parameters, the version they are and the steps the
    worker has done: what its checkpoint holds besides the random generators."""

    def __init__(self, model) -> None:
        self.model, self.version, self.steps = model, 0, 0

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "version": self.version, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.version, self.steps = state["version"], state["steps"]


def work(ctx: WorkerContext, model, params: Params) -> None:
    copy = ServerCopy(model)
    incoming = torch.empty(flat_params(model).numel() + 1)
    count = cut_count(ctx.world - 1, params)
    chain = ctx.compressor(model)
    link = None if chain is None else ps_compress.WorkerLink(ctx, model, chain)
    labels = byzantine.worker_labels(ctx, ctx.world - 1)  # flipped where it flips them

    def step(x, y):
        loss = compute_gradients(model, x, labels(y, copy.steps + 1))
        n = float(len(y))
        if link is not None:
            link.send(flat_grads(model), loss, n, copy.version)
            copy.version = link.receive()
        else:
            trailer = torch.tensor([loss * n, n, float(copy.version)])
            ctx.comm.send(torch.cat([flat_grads(model) * n, trailer]), SERVER)
            ctx.comm.recv(incoming, SERVER)
            set_flat_params(model, incoming[:-1])
            copy.version = int(incoming[-1])
        copy.steps += 1
        if params.mode == "async" and ctx.checkpoint_due(count(copy.steps)[1]):
            ctx.comm.barrier()  # the cut: wait until the server has written its checkpoint
        return loss, len(y)

    schedule = sampler_schedule(ctx, ctx.rank - 1, ctx.world - 1)
    keep = {"copy": copy} if link is None else {"copy": copy, "link": link}
    train_epochs(ctx, model, step, schedule, evaluate=False, keep=keep, count=count)


def cut_count(workers: int, params: Params) -> Count:
    """A worker's checkpoints in server steps: its own in sync mode, N x its own in async
    mode (where every worker has done as many steps as it has)."""
    scale = workers if params.mode == "async" else 1
    return lambda done: ("step", done * scale)


# --- server ------------------------------------------------------------------------------------


def serve(ctx: WorkerContext, model, params: Params) -> None:
    cfg = ctx.cfg
    opt = make_optimizer(model.parameters(), cfg.optimizer)
    workers = ctx.world - 1
    per_worker = cfg.epochs * len(sampler_schedule(ctx, 0, workers)(0))
    sync = params.mode == "sync"
    total = per_worker if sync else per_worker * workers
    state = {"version": 0, "epoch_len": total // cfg.epochs}
    chain = ctx.compressor(model)
    link = None if chain is None else ps_compress.ServerLink(ctx, model, chain, workers)
    keep = {"model": model, "optimizer": opt}
    if link is not None:
        keep["link"] = link  # error feedback memory and the downlink's copies
    byz = byzantine.server_view(ctx, workers, sync)
    if byz is not None:
        keep["byzantine"] = byz  # the steps crafted (and async: each worker's last gradient)
    first = resume_server(ctx, keep, state, total)
    for step in range(first + 1, total + 1):
        start = time.perf_counter()
        if sync:
            loss, samples, *more = sync_update(ctx, model, opt, workers, state, link, byz)
            extra = dict(*more)
        else:
            loss, samples, extra = async_update(ctx, model, opt, params, state, link, byz)
        ctx.recorder.step(
            step,
            loss,
            samples,
            time.perf_counter() - start,
            epoch=(step - 1) // state["epoch_len"],
            **extra,
        )
        maybe_evaluate(ctx, model, step, state["epoch_len"])
        save_server_if_due(ctx, keep, state, step, None if sync else workers)
    ctx.recorder.phase("train_end", steps=total, version=state["version"])
    ctx.save_model(model)


def resume_server(ctx: WorkerContext, keep: dict, state: dict, total: int) -> int:
    """The steps done before: the checkpoint's (its model, optimizer, compression state and
    version restored), or 0 on a fresh start, which begins the "train" phase."""
    resumed = ctx.restore(keep)
    if resumed is None:
        ctx.recorder.phase("train", total=total, unit="step")
        return 0
    state["version"] = resumed["extra"]["version"]
    return resumed["position"]["done"]


def save_server_if_due(ctx: WorkerContext, keep: dict, state: dict, step: int, cut) -> None:
    """The server's checkpoint after `step` (and its evaluation), where one is due. Async
    (`cut` workers): only where each worker has done step / cut steps, and waits at a
    barrier for it (see the module docstring)."""
    if (cut is not None and step % cut) or not ctx.checkpoint_due(step):
        return
    ctx.save_checkpoint(step, "step", keep, {"done": step}, {"version": state["version"]})
    if cut is not None:
        ctx.comm.barrier()  # the workers wait there: none runs ahead of the cut


def maybe_evaluate(ctx: WorkerContext, model, step: int, epoch_len: int) -> None:
    every = ctx.cfg.eval_every or epoch_len
    if step % every == 0 or step == epoch_len * ctx.cfg.epochs:
        ctx.evaluate(model, step=step, epoch=(step - 1) // epoch_len)


def sync_update(ctx, model, opt, workers: int, state: dict, link=None, byz=None) -> tuple:
    """One synchronous step: (mean loss, samples), and the step event's fields under an
    attack or a robust rule."""
    if link is not None:
        step = ps_compress.sync_update(link, lambda grad: apply_gradient(model, opt, grad))
        state["version"] += 1
        link.reply(state["version"], list(range(1, workers + 1)))
        return step
    size = flat_params(model).numel() + TRAILER
    if byz is not None:
        apply = lambda grad: apply_gradient(model, opt, grad)  # noqa: E731
        step = byzantine.server_sync(ctx.comm, size, workers, byz, apply)
    else:
        step = summed_update(ctx, model, opt, workers, size)
    state["version"] += 1
    reply = with_version(model, state["version"])
    for dst in range(1, workers + 1):
        ctx.comm.send(reply, dst)
    return step


def summed_update(ctx, model, opt, workers: int, size: int) -> tuple[float, int]:
    """The sample-weighted mean of every worker's gradient, applied."""
    total = torch.zeros(size)
    buf = torch.empty(size)
    for src in range(1, workers + 1):
        ctx.comm.recv(buf, src)
        total += buf
    apply_gradient(model, opt, total[:-TRAILER] / total[-2])
    return float(total[-3] / total[-2]), int(total[-2])


def async_update(ctx, model, opt, params: Params, state: dict, link=None, byz=None):
    src, grad, trailer = receive_any(ctx, model, link)
    staleness = state["version"] - int(trailer[-1])
    stale = params.max_staleness is not None and staleness > params.max_staleness
    fields = {}
    if not stale and byz is not None:
        grad, fields = byz.arrive(src - 1, grad)  # None: the rule waits for more workers
    if not stale and grad is not None:
        apply_gradient(model, opt, grad)
        state["version"] += 1
    if link is not None:
        link.reply(state["version"], [src])
    else:
        ctx.comm.send(with_version(model, state["version"]), src)
    extra = {"worker": src, "staleness": staleness, "dropped": stale, **fields}
    return float(trailer[-3] / trailer[-2]), int(trailer[-2]), extra


def receive_any(ctx, model, link):
    """The next gradient from any worker: its rank, the mean gradient and the trailer
    (weighted loss, samples, version)."""
    if link is not None:
        src, grad, trailer = link.receive_one()
        return src, link.up.aggregate(grad), trailer
    buf = torch.empty(flat_params(model).numel() + TRAILER)
    src = ctx.comm.recv(buf)
    return src, buf[:-TRAILER] / buf[-2], buf[-TRAILER:]


def apply_gradient(model, opt, grad: torch.Tensor) -> None:
    set_flat_grads(model, grad)
    opt.step()


def with_version(model, version: int) -> torch.Tensor:
    return torch.cat([flat_params(model), torch.tensor([float(version)])])


def comm_analysis(cfg, per_rank: dict, params: int, units: int) -> dict:
    """Per worker per step: gradients up plus parameters down, 2 * P * 4 bytes; the server
    carries N times that. Compressed, each direction is measured apart, and the formulas are
    the chain's (ps_compress.analytic, through the summary's extra figures)."""
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
        **directions(cfg, workers, steps),
    }


def directions(cfg, workers: list[dict], steps: float) -> dict:
    """Compressed runs: a worker's bytes up (sent) and down (received) per step."""
    if not cfg.compress.names or not workers:
        return {}
    up = sum(w["bytes_sent"] for w in workers) / len(workers)
    down = sum(w["bytes_recv"] for w in workers) / len(workers)
    return {
        "uplink_bytes_per_step_measured": round(up / steps, 1),
        "downlink_bytes_per_step_measured": round(down / steps, 1),
    }


def stale_summary(cfg, lead: list[dict]) -> dict:
    """Async mode: how many gradients were dropped as too stale, and the worst staleness;
    compressed runs: the bytes' formulas (ps_compress.analytic)."""
    formulas = ps_compress.analytic(cfg, lead)
    if cfg.strategy.mode != "async":
        return formulas
    steps = [e for e in lead if e["kind"] == "step"]
    return {
        **formulas,
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
    network="server",
    threats=frozenset({"attack"}),
    summary_rows=(("stale gradients dropped", "stale_gradients_dropped"),),
)
