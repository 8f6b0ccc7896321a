"""The seed's pipeline: a driver process with remote references to the stage modules.

Rank 0 (the driver) reads the batches, holds an RRef to each stage module (built on ranks
1..S) and, per microbatch, chains `stage.remote().forward(previous)` so each activation goes
straight from one stage to the next; the last stage's outputs come back to the driver, which
computes each microbatch's share of the batch loss. torch.distributed.autograd runs each
microbatch's backward pass across the processes, and each stage sums its gradients in
microbatch order and steps its own optimizer where its parameters live. This is the
TensorPipe RPC pipeline of PyTorch's distributed tutorials, with GPipe's synchronous flush
(Huang et al. 2019): the microbatches go through the stages concurrently, each one's
backward pass starting when its forward pass returns, and the stages step once all are done.

Each microbatch has its own distributed autograd context, on a thread of its own. With one
context for the whole batch, several microbatches' gradients reach a stage at once, and
the distributed engine could end the stage's part of the pass while one of them was still
running there: the optimizer then stepped on partial gradients (losses off by 0.01 to 0.2
now and then). One context per microbatch has one backward pass per stage and context, and
the fixed summation order makes every run, resumed or not, the same bit for bit.

RPC needs its own rendezvous beside the run's gloo group: rank 0 hosts a TCPStore on a free
port, tells the others its port through the counted communicator, and `init_rpc` joins
through a rendezvous handler that hands it that store, so every wait has the run's timeout.

A checkpoint is written by every process at the driver's step: the driver asks each stage
to save its parameters and its optimizer's state, then saves its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.autograd as dist_autograd
import torch.distributed.rpc as rpc
import torch.nn.functional as F
from torch.distributed.rendezvous import register_rendezvous_handler

from distlab.models import build_model, model_layers
from distlab.strategies.pipeline.loop import (
    flat_of,
    load_flat,
    make_plan,
    microbatch_count,
    plan_record,
    resumed_cuts,
    train_loop,
)
from distlab.strategies.pipeline.meter import Meter, nbytes, stage_record
from distlab.strategies.pipeline.split import Plan, owned_names, stage_module
from distlab.training import make_optimizer

if TYPE_CHECKING:
    from distlab.runtime.context import WorkerContext

SCHEME = "distlab-rpc"
# This process's rendezvous store and its stage's state (one RPC agent per process).
_PROCESS: dict[str, Any] = {}


def worker_name(rank: int) -> str:
    return "driver" if rank == 0 else f"stage{rank - 1}"


def run_rpc(ctx: WorkerContext, params: Any) -> None:
    quiet_rpc_warnings()
    # A stage's state exists before RPC starts: the driver may call it at once.
    _PROCESS.update(ctx=ctx, meter=Meter(), active=time.monotonic(), done=threading.Event())
    start_rpc(ctx)
    try:
        drive(ctx, params) if ctx.rank == 0 else serve(ctx)
    except BaseException:
        rpc.shutdown(graceful=False)  # a graceful one would wait for peers that wait for us
        raise
    rpc.shutdown(graceful=True, timeout=ctx.cfg.timeout)


# --- rendezvous --------------------------------------------------------------------------------


def start_rpc(ctx: WorkerContext) -> None:
    """init_rpc on a store of this run's own, reached within the run's timeout."""
    timeout = timedelta(seconds=ctx.cfg.timeout)
    host = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = torch.zeros(1, dtype=torch.int64)
    if ctx.rank == 0:
        store = dist.TCPStore(host, 0, None, True, timeout, wait_for_workers=False)
        port[0] = store.port
    ctx.comm.broadcast(port, 0)
    if ctx.rank != 0:
        store = dist.TCPStore(host, int(port), None, False, timeout)
    _PROCESS.update(store=store, rank=ctx.rank, world=ctx.world)
    register_handler()
    options = rpc.TensorPipeRpcBackendOptions(
        init_method=f"{SCHEME}://", rpc_timeout=ctx.cfg.timeout
    )
    rpc.init_rpc(
        worker_name(ctx.rank), rank=ctx.rank, world_size=ctx.world, rpc_backend_options=options
    )


def quiet_rpc_warnings() -> None:
    """RPC's notices (its own gloo group used as a ProcessGroup, an optimizer stepped in
    Python rather than TorchScript, the GIL it holds: microbatch threads are short here) say
    nothing about the run; this process exists for this run alone."""
    logging.getLogger("torch.distributed.optim.optimizer").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*as a ProcessGroup.*")


def register_handler() -> None:
    try:
        register_rendezvous_handler(SCHEME, hand_over_store)
    except RuntimeError:
        pass  # already registered in this process (a second run in one interpreter)


def hand_over_store(url: str, **kwargs: Any):
    yield _PROCESS["store"], _PROCESS["rank"], _PROCESS["world"]


# --- stages ------------------------------------------------------------------------------------


class _Mark(torch.autograd.Function):
    """Identity; calls `hook(gradient)` when the gradient passes back through it, which
    tells a stage when its part of the distributed backward pass starts and ends."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, hook: Any) -> torch.Tensor:
        ctx.hook = hook
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        ctx.hook(grad)
        return grad, None


class RemoteStage:
    """One stage's pieces of the model, built in the stage's process from the run's seed,
    and what it measures: bytes across its cuts and its busy intervals."""

    def __init__(
        self,
        model: str,
        shape: tuple,
        classes: int,
        seed: int,
        bounds: tuple,
        index: int,
        stages: int,
    ) -> None:
        full = build_model(model, shape, classes, seed)
        self.module = stage_module(model_layers(full), bounds)
        self.model, self.names = full, owned_names(full, stage_module(model_layers(full), bounds))
        self.index, self.last = index, index == stages - 1
        self.meter: Meter = _PROCESS["meter"]
        self.optimizer = make_optimizer(self.module.parameters(), _PROCESS["ctx"].cfg.optimizer)

    def forward(self, x_ref: Any) -> torch.Tensor:
        touch()
        x = x_ref.to_here()
        self.count(recv=nbytes(x), cut=self.index > 0)
        if self.index == 0:
            # A local leaf: its gradient marks the end of this stage's backward pass, and
            # nothing goes back to the driver.
            x = x.detach().requires_grad_()
        marks: dict[str, float] = {}
        begin = time.perf_counter()
        out = self.module(_Mark.apply(x, lambda g: self.backward_done(g, marks)))
        self.meter.add_interval(begin, time.perf_counter())
        self.count(sent=nbytes(out), cut=not self.last)
        return _Mark.apply(out, lambda g: self.backward_started(g, marks))

    def backward_started(self, grad: torch.Tensor, marks: dict) -> None:
        marks["begin"] = time.perf_counter()
        self.count(recv=nbytes(grad), cut=not self.last)

    def backward_done(self, grad: torch.Tensor, marks: dict) -> None:
        self.meter.add_interval(marks.get("begin", time.perf_counter()), time.perf_counter())
        if self.index > 0:
            self.count(sent=nbytes(grad), cut=True)

    def count(self, sent: int = 0, recv: int = 0, cut: bool = False) -> None:
        """Every byte this process moves goes through its communicator's count; the ones
        between two stages are also the pipeline's cut bytes."""
        with self.meter.lock:
            _PROCESS["ctx"].comm.count(sent, recv)
        if cut:
            self.meter.add_bytes(sent, recv)

    def ready(self) -> bool:
        return True

    def step(self, contexts: list[int]) -> None:
        """One optimizer step on the sum of the microbatches' gradients, in their order."""
        touch()
        grads = [dist_autograd.get_gradients(c) for c in contexts]
        for p in self.module.parameters():
            first, *rest = [g[p] for g in grads if p in g]
            p.grad = first.clone()
            for part in rest:
                p.grad += part
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state(self) -> torch.Tensor:
        """This stage's parameters, packed in the full model's order, for the driver."""
        touch()
        flat = flat_of(self.model, self.names)
        self.count(sent=nbytes(flat))
        return flat

    def stats(self) -> torch.Tensor:
        touch()
        return self.meter.as_tensor()

    def save(self, at: int, position: dict) -> None:
        """This stage's checkpoint, in its own process: its parameters, its optimizer's
        state, its meter's totals."""
        touch()
        kept = {"stage": self.module, "optimizer": self.optimizer}
        extra = {"meter": self.meter.totals()}
        _PROCESS["ctx"].save_checkpoint(at, "step", kept, position, extra)

    def restore(self) -> None:
        """Load this stage's part of the checkpoint the run resumes from."""
        touch()
        kept = {"stage": self.module, "optimizer": self.optimizer}
        state = _PROCESS["ctx"].restore(kept)
        self.meter.carry(state["extra"]["meter"])


def touch() -> None:
    _PROCESS["active"] = time.monotonic()


def finish() -> None:
    """Called by the driver when training is over."""
    _PROCESS["done"].set()


def serve(ctx: WorkerContext) -> None:
    """A stage process answers the driver's calls until it says training is over; a driver
    silent for longer than the run's timeout is a failure, not a wait."""
    while not _PROCESS["done"].wait(0.2):
        if time.monotonic() - _PROCESS["active"] > ctx.cfg.timeout:
            raise TimeoutError(
                f"{worker_name(ctx.rank)}: no call from the driver within the "
                f"{ctx.cfg.timeout:g} s timeout"
            )


# --- driver ------------------------------------------------------------------------------------


def drive(ctx: WorkerContext, params: Any) -> None:
    """Rank 0: build the stages remotely, train, collect the weights for evals and model.pt."""
    model = ctx.build_model()
    layers = model_layers(model)
    saved = resumed_cuts(ctx)
    if saved is None:
        plan = make_plan(ctx, params.split, params.microbatches, layers)
    else:
        plan = Plan(saved, len(layers))
    owned = [owned_names(model, stage_module(layers, b)) for b in plan.bounds]
    stages = [remote_stage(ctx, plan.bounds[s], s, plan.stages) for s in range(plan.stages)]
    meter = Meter()

    def step(idx: np.ndarray) -> float:
        return drive_step(ctx, stages, meter, idx, params.microbatches)

    def sync_eval(**where: int) -> None:
        fetch_weights(ctx, model, stages, owned)
        ctx.evaluate(model, **where)

    done = train_loop(ctx, step, sync_eval, DriverKeep(ctx, stages, meter, plan))
    fetch_weights(ctx, model, stages, owned)
    record = plan_record(model, layers, plan, ctx.data.input_shape)
    record["stages"] = stage_stats(stages, meter.step_seconds)
    record["driver"] = {"driver_bytes_per_step_measured": round(meter.sent / max(done, 1), 1)}
    ctx.recorder.phase("train_end", steps=done, pipeline=record)
    ctx.save_model(model)
    for s in range(plan.stages):
        rpc.rpc_sync(worker_name(s + 1), finish)


class DriverKeep:
    """The checkpoint of an rpc pipeline: the driver asks each stage to write its part
    (parameters, optimizer state, meter) in its own process, then writes its own (random
    generators, counters, meter, cuts), all for the same step."""

    def __init__(self, ctx: WorkerContext, stages: list, meter: Meter, plan) -> None:
        self.ctx, self.stages, self.meter, self.plan = ctx, stages, meter, plan

    def restore(self) -> dict | None:
        state = self.ctx.restore({})
        if state is None:
            return None
        for stage in self.stages:
            stage.rpc_sync().restore()
        self.meter.carry(state["extra"]["meter"])
        return state["position"]

    def save(self, at: int, position: dict) -> None:
        for stage in self.stages:
            stage.rpc_sync().save(at, position)
        extra = {"meter": self.meter.totals(), "cuts": list(self.plan.cuts)}
        self.ctx.save_checkpoint(at, "step", {}, position, extra)


def remote_stage(ctx: WorkerContext, bounds: tuple, index: int, stages: int) -> Any:
    data, cfg = ctx.data, ctx.cfg
    args = (cfg.model, data.input_shape, data.classes, cfg.seed, bounds, index, stages)
    stage = rpc.remote(worker_name(index + 1), RemoteStage, args=args)
    # An RRef's proxy learns the remote object's type on its first call, and sends an
    # rpc_async made before it knows from a callback thread, outside the caller's autograd
    # context. A blocking call first makes every later one go out from its caller's thread.
    stage.rpc_sync().ready()
    return stage


def drive_step(ctx, stages: list, meter: Meter, idx: np.ndarray, wanted: int) -> float:
    """One step: each microbatch forward and backward on a thread and autograd context of
    its own (overlapping through the stages), then every stage steps on the sum."""
    index = torch.from_numpy(idx)
    x, y = ctx.data.x_train[index], ctx.data.y_train[index]
    chunks = microbatch_count(len(y), wanted)
    begin = time.perf_counter()
    pairs = zip(x.chunk(chunks), y.chunk(chunks), strict=True)
    runs = [Microbatch(stages, xs, ys, len(y)) for xs, ys in pairs]
    for run in runs:
        run.start()
    for run in runs:
        run.finish(ctx.cfg.timeout)
    seconds = time.perf_counter() - begin
    contexts = [run.context for run in runs]
    try:
        for stepped in [stage.rpc_async().step(contexts) for stage in stages]:
            stepped.wait()
    finally:
        for context in contexts:
            dist_autograd._release_context(context)
    logits = sum(run.logit_bytes for run in runs)
    meter.step_seconds += seconds
    # inputs and logit gradients out, logits in: the driver's traffic, beside the cuts'
    meter.add_bytes(sent=nbytes(x) + logits, recv=logits)
    ctx.comm.count(nbytes(x) + logits, logits, seconds)
    return float(sum(run.loss for run in runs))


class Microbatch(threading.Thread):
    """One microbatch's forward through the stages and its backward, in a distributed
    autograd context this thread opens and the driver releases after the stages stepped."""

    def __init__(self, stages: list, x: torch.Tensor, y: torch.Tensor, batch: int) -> None:
        super().__init__(daemon=True)
        self.stages, self.x, self.y, self.batch = stages, x, y, batch
        self.context = -1
        self.loss, self.logit_bytes = 0.0, 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            # Not the `context()` manager: it would release the context, and the gradients
            # held in it, when this thread ends, before the stages step.
            self.context = dist_autograd._new_context()._context_id()
            logits = launch(self.stages, self.x).wait()
            # this microbatch's share of the batch's mean loss
            loss = F.cross_entropy(logits, self.y, reduction="sum") / self.batch
            dist_autograd.backward(self.context, [loss])
            self.loss, self.logit_bytes = float(loss.detach()), nbytes(logits)
        except BaseException as error:  # handed to the driver's thread
            self.error = error

    def finish(self, timeout: float) -> None:
        self.join(timeout)
        if self.is_alive():
            raise TimeoutError(f"a microbatch did not finish within the {timeout:g} s timeout")
        if self.error is not None:
            raise self.error


def launch(stages: list, chunk: torch.Tensor) -> Any:
    """One microbatch through every stage: each stage fetches its input from the previous
    one; only the last stage's output comes back."""
    ref = rpc.RRef(chunk)
    for stage in stages[:-1]:
        ref = stage.remote().forward(ref)
    return stages[-1].rpc_async().forward(ref)


def fetch_weights(ctx: WorkerContext, model, stages: list, owned: list[list[str]]) -> None:
    for stage, names in zip(stages, owned, strict=True):
        flat = stage.rpc_sync().state()
        ctx.comm.count(0, nbytes(flat))
        load_flat(model, names, flat)


def stage_stats(stages: list, step_seconds: float) -> list[dict]:
    """Each stage's cut bytes and busy seconds over the driver's step seconds."""
    records = []
    for s, stage in enumerate(stages):
        values = stage.rpc_sync().stats()
        values[3] = step_seconds
        records.append(stage_record(s, values))
    return records
