"""Local SGD: every worker runs SGD on its own batches; the models are averaged every H steps.

Stich 2019, "Local SGD converges fast and communicates little": N workers each take H local
SGD steps, then their parameters are averaged (one allreduce), so the traffic is one model
exchange per H steps instead of one gradient exchange per step. Lin et al. 2020, "Don't use
large mini-batches, use local SGD": post-local SGD starts with `warmup_steps` steps of plain
gradient allreduce and switches to local steps afterwards. Zinkevich et al. 2010,
"Parallelized stochastic gradient descent": `period: end` averages once, after all the
training (one-shot averaging, PSGD).

    distlab run --strategy local-sgd --workers 4 --set strategy.period=8
    distlab run --strategy local-sgd --workers 4 --set strategy.period=end --sampler random
    distlab run --strategy local-sgd --workers 4 --partition dirichlet --alpha 0.1

Data: with the IID partition, workers walk the run's --sampler (split-batch, random,
balanced); with a non-IID --partition each worker walks its own part. Every worker takes the
same number of steps per epoch, otherwise a rank would wait forever at an averaging
(distlab.strategies.lockstep).

Averaging is weighted by the samples each worker used since the last averaging, so with
`period: 1` and plain SGD the run is step for step the gradient allreduce (the average of
models one local step apart is one step with the sample-weighted mean gradient), also when
split-batch cuts a batch into uneven chunks.

Evaluation (at each epoch end, or every --eval-every steps) measures the average of the
workers' current models. Where that step is not an averaging step anyway, the average is
built into a separate evaluation copy (one counted allreduce, an "eval averaging") and the
workers go on from their own models: measuring must not shorten the period, or `period: end`
over several epochs would stop being one-shot. The final step always averages; model.pt is
that average.

Step events: `loss` is the sample-weighted mean over all workers at a step that
communicates (warmup allreduce, averaging, eval averaging) and the lead worker's own local
loss at a local step; `samples` is always the global count (all workers' batches of that
step, known to every rank from the seeded schedules).

Checkpoints (--set checkpoint.every=N) count steps, the unit of the events and the summary:
every worker writes its own model, optimizer, averaged copy and the samples since its last
averaging at the same step, so a resumed run ends bit for bit where an uninterrupted one
does. Between averagings no message holds a fast worker back: it could write two
checkpoints and drop the older, which a slow worker has not written yet, leaving none
complete. So at a checkpoint on a local step the workers meet at a barrier first (0 bytes,
one counted call that a run without checkpoints does not make).

With compress.kind set, each averaging exchanges compressed model changes since the last
shared model instead of the models (strategies/compressed.py, DeltaAveraging), with error
feedback across averagings; warmup allreduce steps and eval-only averagings stay dense
(the warmup is plain allreduce by design, and measuring must not touch the training's
error feedback).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field, field_validator

from distlab.strategies import lockstep
from distlab.strategies.allreduce import averaged_gradient_step
from distlab.strategies.common import train_epochs
from distlab.strategies.compressed import (
    DeltaAveraging,
    exchange_bytes,
    payload_size,
    refuse_powersgd,
)
from distlab.strategies.periodic import Plan
from distlab.strategies.spec import StrategyBase, StrategySpec, check_data_parallel
from distlab.training import (
    attach_flat_grads,
    compute_gradients,
    flat_params,
    make_optimizer,
    set_flat_params,
)

if TYPE_CHECKING:
    from distlab.config import RunConfig
    from distlab.runtime.context import WorkerContext

# Trailer of every message: this step's loss x batch samples, its batch samples and (for an
# averaging) the samples since the last averaging, the weight of the worker's model.
TRAILER = 3


class Params(StrategyBase):
    """Each worker takes local SGD steps; the models are averaged every `period` steps."""

    name: Literal["local-sgd"] = "local-sgd"
    period: int | Literal["end"] = 8
    """Local steps H between averagings (>= 1; 1 = gradient allreduce with plain SGD), or
    'end': average once, after the last step (one-shot averaging)."""
    warmup_steps: int = Field(0, ge=0)
    """Post-local SGD: the first this many steps average gradients every step (allreduce),
    local steps start after them."""
    average_momentum: bool = False
    """Also average the SGD momentum buffers at each averaging (doubles the message); needs
    optimizer sgd with momentum > 0."""

    @field_validator("period", mode="before")
    @classmethod
    def _period(cls, value: object) -> object:
        # One message for every bad value: pydantic's own names each union member apart.
        if value == "end" or (type(value) is int and value >= 1):
            return value
        raise ValueError(f"strategy.period must be an integer >= 1 or 'end' (got {value!r})")


# --- which steps communicate ------------------------------------------------------------------


def make_plan(cfg: RunConfig, steps_per_epoch: int) -> Plan:
    """Local SGD's plan: warmup allreduce steps, then an averaging every `period` steps."""
    period = cfg.strategy.period
    return Plan(
        steps_per_epoch,
        cfg.epochs,
        None if period == "end" else period,
        cfg.strategy.warmup_steps,
        cfg.eval_every,
    )


# --- one worker -----------------------------------------------------------------------------


class LocalWorker:
    """One worker's model, optimizer and counters; `step` is train_epochs' step function.
    `shown` is the averaged copy that train_epochs evaluates and saves."""

    def __init__(self, ctx: WorkerContext, params: Params, plan: Plan, sizes: list[int]):
        self.ctx, self.params, self.plan, self.sizes = ctx, params, plan, sizes
        self.model, self.shown = ctx.build_model(), ctx.build_model()
        self.opt = make_optimizer(self.model.parameters(), ctx.cfg.optimizer)
        # Backward writes into one flat buffer that a warmup step sends as it is.
        buf = attach_flat_grads(self.model, extra=2)
        self.warmup_step = averaged_gradient_step(ctx, self.model, self.opt, buf)
        chain = ctx.compressor(self.model)
        self.deltas = chain and DeltaAveraging(ctx, chain, self.model)
        self.done = 0
        self.since = 0.0  # samples since the last averaging: this model's weight

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        self.done += 1
        kind = self.plan.kind(self.done)
        if kind == "local" and self.ctx.checkpoint_due(self.done):
            self.ctx.comm.barrier()  # no worker runs a checkpoint ahead (module docstring)
        if kind == "allreduce":
            loss, _ = self.warmup_step(x, y)  # post-local SGD: allreduce's own step
            if self.deltas:
                self.deltas.restart(self.model)
        else:
            loss, n = compute_gradients(self.model, x, y), float(len(y))
            self.opt.step()
            self.since += n
            if kind != "local":
                loss = self.average(loss, n, into_shown=kind == "eval-average")
        if kind in ("allreduce", "average") and self.plan.evaluates(self.done):
            set_flat_params(self.shown, flat_params(self.model))
        return loss, self.sizes[self.done - 1]

    def average(self, loss: float, n: float, into_shown: bool) -> float:
        """One allreduce of the sample-weighted models (and momenta); returns the workers'
        mean loss of this step. `into_shown` fills the evaluation copy only."""
        if self.deltas and not into_shown:
            loss = self.deltas.average(self.model, loss, n, self.since)
            self.since = 0.0
            return loss
        momentum = self.params.average_momentum and not into_shown
        parts = [flat_params(self.model)] + ([flat_momentum(self.opt)] if momentum else [])
        trailer = torch.tensor([loss * n, n, self.since])
        msg = torch.cat([*(p * self.since for p in parts), trailer])
        self.ctx.comm.all_reduce(msg)
        size, total = parts[0].numel(), float(msg[-1])
        set_flat_params(self.shown if into_shown else self.model, msg[:size] / total)
        if momentum:
            set_flat_momentum(self.opt, msg[size : 2 * size] / total)
        if not into_shown:
            self.since = 0.0
        return float(msg[-3]) / float(msg[-2])

    def state_dict(self) -> dict:
        """What a checkpoint holds of this worker (the random generators go besides)."""
        return {
            "model": self.model.state_dict(),
            "shown": self.shown.state_dict(),
            "optimizer": self.opt.state_dict(),
            "done": self.done,
            "since": self.since,
            **({"deltas": self.deltas.state_dict()} if self.deltas else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])  # in place: the flat gradient buffer stays
        self.shown.load_state_dict(state["shown"])
        self.opt.load_state_dict(state["optimizer"])
        self.done, self.since = state["done"], state["since"]
        if self.deltas:
            self.deltas.load_state_dict(state["deltas"])


def flat_momentum(opt: torch.optim.Optimizer) -> torch.Tensor:
    """The SGD momentum buffers as one flat tensor (zeros before the first step)."""
    params = [p for group in opt.param_groups for p in group["params"]]
    bufs = [opt.state.get(p, {}).get("momentum_buffer") for p in params]
    return torch.cat(
        [
            (b if b is not None else torch.zeros_like(p)).reshape(-1)
            for b, p in zip(bufs, params, strict=True)
        ]
    )


def set_flat_momentum(opt: torch.optim.Optimizer, flat: torch.Tensor) -> None:
    offset = 0
    for group in opt.param_groups:
        for p in group["params"]:
            opt.state[p]["momentum_buffer"] = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()


def run(ctx: WorkerContext, params: Params) -> None:
    schedules = lockstep.worker_schedules(ctx)
    own = schedules[ctx.rank]
    plan = make_plan(ctx.cfg, len(own(0)))
    worker = LocalWorker(ctx, params, plan, lockstep.global_samples(schedules, ctx.cfg.epochs))
    train_epochs(ctx, worker.shown, worker.step, own, keep={"worker": worker})


# --- the spec's answers -----------------------------------------------------------------------


def check(cfg: RunConfig) -> None:
    """Rules that span several fields."""
    scheme = cfg.partition.scheme
    if scheme == "iid":
        check_data_parallel(cfg)
    elif cfg.sampler != "split-batch":
        raise ValueError(
            f"--sampler {cfg.sampler} does not apply with --partition {scheme}: each worker "
            "walks its own part; leave --sampler out, or use --partition iid to share the "
            "data through the sampler"
        )
    refuse_powersgd(cfg, "local-sgd")
    if cfg.strategy.average_momentum and cfg.compress.names:
        raise ValueError(
            f"strategy.average_momentum with compress.kind={cfg.compress.kind}: local-sgd "
            "compresses the models' changes only; leave one of them out"
        )
    opt = cfg.optimizer
    if cfg.strategy.average_momentum and (opt.name != "sgd" or not opt.momentum):
        raise ValueError(
            "strategy.average_momentum needs optimizer sgd with momentum > 0 "
            f"(got {opt.name}, momentum {opt.momentum})"
        )


def comm_analysis(cfg: RunConfig, per_rank: dict, params: int, units: int) -> dict:
    """Per worker per step, measured over all ranks, next to the analytic 2 * P * 4 bytes of
    each allreduce the plan makes (an averaging: averaging_bytes)."""
    if cfg.workers == 1:
        return {}  # one worker exchanges nothing
    counts = plan_counts(make_plan(cfg, units // cfg.epochs))
    messages = counts["allreduce_steps"] + counts["eval_averagings"]
    analytic = 2 * params * 4 * messages + averaging_bytes(cfg, params) * counts["averagings"]
    workers = list(per_rank.values())
    measured = sum(w["bytes_sent"] + w["bytes_recv"] for w in workers) / len(workers)
    return {
        "bytes_per_step_measured": round(measured / units, 1),
        "bytes_per_step_analytic": round(analytic / units, 1),
    }


def averaging_bytes(cfg: RunConfig, params: int) -> int:
    """One worker's bytes per training averaging: 2 x P x 4 (2 x 2P x 4 with momenta), or
    with compression 2 (N-1) x (payload + 3 float64) of the all_gather."""
    if cfg.compress.names:
        return exchange_bytes(payload_size(cfg, [(params,)]), 3, cfg.workers)
    return 2 * (2 if cfg.strategy.average_momentum else 1) * params * 4


def plan_counts(plan: Plan) -> dict[str, int]:
    kinds = [plan.kind(s) for s in range(1, plan.total + 1)]
    return {
        "averagings": kinds.count("average"),
        "eval_averagings": kinds.count("eval-average"),
        "allreduce_steps": kinds.count("allreduce"),
    }


def averaging_summary(cfg: RunConfig, lead: list[dict]) -> dict:
    """How many averagings the plan made (training ones, eval-only ones, warmup allreduce
    steps) and the bytes the lead worker moved at each training averaging, measured from its
    step events, next to the analytic 2 * P * 4 (2 * 2P * 4 with momenta)."""
    train = next((e for e in lead if e.get("phase") == "train"), None)
    start = next((e for e in lead if e.get("phase") == "start"), {})
    if train is None:
        return {}
    plan = make_plan(cfg, train["total"] // cfg.epochs)
    steps = [e for e in lead if e["kind"] == "step"]
    moved = [
        e.get("bytes_sent", 0) + e.get("bytes_recv", 0)
        for e in steps
        if plan.kind(e["step"]) == "average"
    ]
    params = start.get("params")
    traffic = cfg.workers > 1 and bool(moved)
    return {
        **plan_counts(plan),
        "bytes_per_averaging_measured": round(sum(moved) / len(moved), 1) if traffic else None,
        "bytes_per_averaging_analytic": averaging_bytes(cfg, params) if params else None,
    }


SPEC = StrategySpec(
    "local-sgd",
    Params,
    run,
    check=check,
    data_partition=lockstep.data_partition,
    comm_analysis=comm_analysis,
    batch_meaning=lockstep.batch_meaning,
    extra_summary=averaging_summary,
    uses_partition=True,  # a non-IID --partition gives each worker its own part
    network="local-ring",
    summary_rows=(
        ("averagings", "averagings"),
        ("bytes/averaging measured", "bytes_per_averaging_measured"),
        ("bytes/averaging analytic", "bytes_per_averaging_analytic"),
    ),
)
