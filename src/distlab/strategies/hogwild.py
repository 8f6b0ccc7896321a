"""Hogwild!: N processes update one model in shared memory without locks.

Niu, Recht, Re and Wright 2011, "HOGWILD!: A Lock-Free Approach to Parallelizing Stochastic
Gradient Descent". Every worker walks its own --sampler share of the training set and
applies its optimizer's step straight to the shared parameters, reading weights that another
worker may be writing at that moment; the paper proves such races cost little when updates
are sparse. Here they are dense (every step touches every weight), the setting of PyTorch's
own Hogwild example, so what the races cost is measured, not bounded. Each worker keeps its
own optimizer state (SGD momentum, Adam moments); only the weights are shared.

The ranks send no messages: the shared launcher (runtime/launchers/shared.py) puts the model,
a lock and per-rank counters in shared memory, which is the channel, so the bytes per step
are 0, measured and analytic. `strategy.lock` holds one lock over each whole update, which
serializes the workers, to show what lock-free saves. One machine, CPU only.

Checkpoints (--set checkpoint.every=N) count each worker's steps. At a checkpoint every
worker stops at a barrier, so the shared model holds no half-done update; the lead writes the
shared model, every worker its optimizer, its place in its schedule and its tallies; a second
barrier keeps the others from writing the model before the lead has read it (on a resume, the
barrier after the lead has loaded the model stands for it, so the counted calls come out as
an uninterrupted run's; the bytes are 0 either way). With one worker a resumed run ends bit
for bit where an uninterrupted one does. With several, the order in which their updates
interleave differs from run to run, so two uninterrupted runs with one seed differ already;
a resumed run goes on from the checkpoint's shared model and each worker's own step.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Literal

import torch

from distlab.runtime.launchers.external import external_env
from distlab.runtime.launchers.shared import refuse_cuda
from distlab.strategies.common import StepFn, local_step, sampler_schedule
from distlab.strategies.spec import StrategyBase, StrategySpec, check_data_parallel
from distlab.training import make_optimizer

if TYPE_CHECKING:
    from torch import nn

    from distlab.config import RunConfig
    from distlab.runtime.context import WorkerContext


class Params(StrategyBase):
    """N processes update one shared-memory model without locks (Hogwild!, Niu et al. 2011)."""

    name: Literal["hogwild"] = "hogwild"
    lock: bool = False
    """Take one shared lock per update (read, gradient, write): shows what lock-free saves."""


def check(cfg: RunConfig) -> None:
    """One machine, CPU memory: refuse CUDA and a run whose processes another launcher
    started (each of them would build a model of its own and share nothing)."""
    check_data_parallel(cfg)
    refuse_cuda(cfg, "strategy hogwild")  # the launcher's rule, before anything starts
    external = external_env()
    if external is not None:
        raise ValueError(
            "strategy hogwild starts its own processes on one machine to share one model in "
            f"memory; it cannot run as rank {external[0]} of {external[1]} of torchrun, "
            "mpirun or Slurm: start it without them"
        )


def run(ctx: WorkerContext, params: Params) -> None:
    shared = shared_objects(ctx)
    model = shared["model"]
    opt = make_optimizer(model.parameters(), ctx.cfg.optimizer)
    step = local_step(model, opt)
    if params.lock:
        step = locked(step, shared["lock"], ctx.cfg.timeout)
    keep = {"model": model, "optimizer": opt} if ctx.is_lead else {"optimizer": opt}
    done, while_evaluating = train_shared(ctx, model, step, shared, keep)
    finish(ctx, model, shared, done, while_evaluating)


def shared_objects(ctx: WorkerContext) -> dict:
    if ctx.shared is None:
        raise RuntimeError(
            "strategy hogwild needs the shared launcher (launcher='shared'), which puts the "
            "model in shared memory; this rank got none"
        )
    return ctx.shared


def locked(step: StepFn, lock, timeout: float) -> StepFn:
    """`step` under the shared lock; a worker that waits past the timeout fails, so a rank
    stuck while holding the lock ends the run instead of hanging it."""

    def step_locked(x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        if not lock.acquire(timeout=timeout):
            raise TimeoutError(f"timed out after {timeout:g} s waiting for the shared lock")
        try:
            return step(x, y)
        finally:
            lock.release()

    return step_locked


def train_shared(
    ctx: WorkerContext, model: nn.Module, step: StepFn, shared: dict, keep: dict
) -> tuple[int, int]:
    """cfg.epochs epochs over this worker's sampler share, each step written straight into
    the shared model. Every rank records its own steps and keeps its tally in its slot of the
    shared counters. Returns the steps done and the samples the other workers trained on
    while the lead evaluated. `keep` is what this rank's checkpoints hold."""
    cfg, x, y = ctx.cfg, ctx.data.x_train, ctx.data.y_train
    schedule = sampler_schedule(ctx, ctx.rank, ctx.world)
    total = cfg.epochs * len(schedule(0))
    done, first, skip, while_evaluating = resume_shared(ctx, keep, shared, total)
    for epoch in range(first, cfg.epochs):
        batches = schedule(epoch)
        for i in range(skip if epoch == first else 0, len(batches)):
            index = torch.from_numpy(batches[i])
            begin = time.perf_counter()
            loss, samples = step(x[index], y[index])
            done += 1
            count_step(shared, ctx.rank, done, samples)
            ctx.maybe_fault(done)
            ctx.check_loss(loss, done)
            seconds = time.perf_counter() - begin
            ctx.recorder.step(done, loss, samples, seconds, epoch=epoch, all_ranks=True)
            if evaluation_due(ctx, done, total, epoch_end=False):
                while_evaluating += evaluate_live(ctx, model, shared, step=done, epoch=epoch)
            if cfg.eval_every or i < len(batches) - 1:  # else after the epoch's evaluation
                position = [done, epoch, i + 1, while_evaluating]
                save_shared_if_due(ctx, keep, shared, position)
        if evaluation_due(ctx, done, total, epoch_end=True):
            while_evaluating += evaluate_live(ctx, model, shared, step=done, epoch=epoch)
        if not cfg.eval_every:
            save_shared_if_due(ctx, keep, shared, [done, epoch + 1, 0, while_evaluating])
    return done, while_evaluating


POSITION = ("done", "epoch", "batch", "while_evaluating")


def resume_shared(ctx: WorkerContext, keep: dict, shared: dict, total: int) -> list[int]:
    """Where this worker starts: [steps done, epoch, batches of it done, samples trained
    while the lead evaluated], from its checkpoint (the lead loads the shared model, each
    worker its own optimizer and tallies), or from the beginning, which starts the "train"
    phase."""
    resumed = ctx.restore(keep)
    if resumed is None:
        ctx.recorder.phase("train", total=total, unit="step")
        return [0, 0, 0, 0]
    position = [resumed["position"][key] for key in POSITION]
    shared["steps"][ctx.rank] = position[0]
    shared["samples"][ctx.rank] = resumed["extra"]["samples"]
    ctx.comm.barrier()  # the checkpoint's second barrier: none trains before the model is in
    return position


def save_shared_if_due(ctx: WorkerContext, keep: dict, shared: dict, position: list[int]) -> None:
    """A checkpoint after `position[0]` steps where one is due: between two barriers, so no
    update is half done while the lead writes the shared model."""
    if not ctx.checkpoint_due(position[0]):
        return
    ctx.comm.barrier()
    samples = int(shared["samples"][ctx.rank])
    where = dict(zip(POSITION, position, strict=True))
    ctx.save_checkpoint(position[0], "step", keep, where, {"samples": samples})
    ctx.comm.barrier()


def count_step(shared: dict, rank: int, done: int, samples: int) -> None:
    # Each rank writes only its own slot: the counters need no lock.
    shared["steps"][rank] = done
    shared["samples"][rank] += samples


def evaluation_due(ctx: WorkerContext, done: int, total: int, epoch_end: bool) -> bool:
    """The lead evaluates every eval_every steps, else at each epoch end; not after its last
    step, since the final evaluation waits for every worker's last update."""
    if not ctx.is_lead or done == total:
        return False
    if ctx.cfg.eval_every:
        return not epoch_end and done % ctx.cfg.eval_every == 0
    return epoch_end


def evaluate_live(ctx: WorkerContext, model: nn.Module, shared: dict, **where: int) -> int:
    """Evaluate the shared model while the other workers keep writing it: a Hogwild read,
    whose weights may be mid-update as any worker's own reads are. Returns the samples the
    others trained on meanwhile, left out of samples/s with the evaluation's seconds."""
    before = int(shared["samples"].sum())
    ctx.evaluate(model, **where)
    return int(shared["samples"].sum()) - before


def finish(
    ctx: WorkerContext, model: nn.Module, shared: dict, done: int, while_evaluating: int
) -> None:
    """Once every worker's last update is in the shared model: the lead evaluates it, records
    every rank's tallies and writes model.pt."""
    ctx.comm.barrier()
    if ctx.is_lead:
        ctx.evaluate(model, step=done, epoch=ctx.cfg.epochs - 1)
    ctx.recorder.phase(
        "train_end",
        steps=done,
        updates_per_rank=shared["steps"].tolist(),
        samples_per_rank=shared["samples"].tolist(),
        samples_while_evaluating=while_evaluating,
    )
    ctx.save_model(model)


def all_workers_summary(cfg: RunConfig, lead: list[dict]) -> dict:
    """Figures over all workers, from the tallies the lead read from shared memory once all
    had finished: updates to the shared model (in all and per rank), samples, and samples/s
    over the lead's train seconds, less the samples the others trained on while the lead
    evaluated (its evaluations are not train seconds). Null when training did not finish."""
    end = next((e for e in lead if "updates_per_rank" in e), None)
    begin = next((e["seconds"] for e in lead if e.get("phase") == "train"), None)
    if end is None or begin is None:
        return dict.fromkeys(("total_updates", "updates_per_rank", "samples"))
    evaluating = sum(e.get("duration", 0.0) for e in lead if e["kind"] == "eval")
    seconds = end["seconds"] - begin - evaluating  # summary.train_seconds, unrounded
    samples = sum(end["samples_per_rank"])
    training = samples - end["samples_while_evaluating"]
    return {
        "total_updates": sum(end["updates_per_rank"]),
        "updates_per_rank": end["updates_per_rank"],
        "samples": samples,
        "samples_per_second": round(training / seconds, 2) if seconds > 0 else None,
    }


def shared_memory_comm(cfg: RunConfig, per_rank: dict, params: int, units: int) -> dict:
    """No messages: the ranks read and write one model in shared memory, which is the
    channel. Measured is what the ranks' communicators counted per step (their one call is a
    barrier, 0 bytes); the analytic figure is 0."""
    moved = sum(r["bytes_sent"] + r["bytes_recv"] for r in per_rank.values())
    return {
        "bytes_per_step_measured": round(moved / len(per_rank) / units, 1),
        "bytes_per_step_analytic": 0,
    }


def batch_meaning(cfg: RunConfig) -> str:
    if cfg.sampler == "split-batch":
        return "global (split across workers; each chunk is one update)"
    return "per worker (each batch is one update)"


SPEC = StrategySpec(
    "hogwild",
    Params,
    run,
    check=check,
    comm_analysis=shared_memory_comm,
    batch_meaning=batch_meaning,
    extra_summary=all_workers_summary,
    launcher="shared",
    network=None,
    no_network="Hogwild shares one model in one machine's memory: no network to model",
    no_compression="its workers update one model in shared memory and send no updates",
)
