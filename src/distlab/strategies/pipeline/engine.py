"""GPipe and 1F1B on torch's own pipelining engine, one stage per process.

`torch.distributed.pipelining` runs the schedules: ScheduleGPipe fills the pipeline with
every microbatch's forward pass, then drains it with the backward passes (Huang et al. 2019,
"GPipe"); Schedule1F1B starts each stage's backward passes as soon as it can and alternates
one forward with one backward (Narayanan et al. 2019, "PipeDream"), which bounds the stored
activations by the stage count instead of the microbatch count. Both leave a bubble of
(S - 1) / (M + S - 1) of a step idle.

The engine moves tensors with torch.distributed directly, so a stage subclass counts the
tensors of every point-to-point op it hands the engine and times its forward and backward
passes; each step's cut bytes and waiting seconds then go through `ctx.comm.count`.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from distlab.models import model_layers
from distlab.strategies.pipeline.loop import (
    agree_plan,
    flat_of,
    load_flat,
    microbatch_count,
    plan_record,
    train_loop,
)
from distlab.strategies.pipeline.meter import Meter, nbytes, stage_record
from distlab.strategies.pipeline.split import Plan, boundary_shapes, owned_names, stage_module
from distlab.training import make_optimizer

if TYPE_CHECKING:
    from distlab.runtime.context import WorkerContext


class CountedStage(PipelineStage):
    """A PipelineStage that counts the bytes of its point-to-point ops and times its
    compute, so the engine's traffic and idle time are measured, not assumed."""

    def __init__(self, *args: Any, meter: Meter, **kwargs: Any) -> None:
        self.meter = meter
        super().__init__(*args, **kwargs)

    def get_fwd_recv_ops(self, fwd_chunk_id: int) -> list[dist.P2POp]:
        return self._count(super().get_fwd_recv_ops(fwd_chunk_id), recv=True)

    def get_bwd_recv_ops(self, bwd_chunk_id: int) -> list[dist.P2POp]:
        return self._count(super().get_bwd_recv_ops(bwd_chunk_id), recv=True)

    def get_fwd_send_ops(self, fwd_chunk_id: int) -> list[dist.P2POp]:
        return self._count(super().get_fwd_send_ops(fwd_chunk_id), recv=False)

    def get_bwd_send_ops(self, bwd_chunk_id: int) -> list[dist.P2POp]:
        return self._count(super().get_bwd_send_ops(bwd_chunk_id), recv=False)

    def forward_one_chunk(self, *args: Any, **kwargs: Any) -> Any:
        with self.meter.busy():
            return super().forward_one_chunk(*args, **kwargs)

    def backward_one_chunk(self, *args: Any, **kwargs: Any) -> Any:
        with self.meter.busy():
            return super().backward_one_chunk(*args, **kwargs)

    def _count(self, ops: list[dist.P2POp], recv: bool) -> list[dist.P2POp]:
        size = sum(nbytes(op.tensor) for op in ops)
        self.meter.add_bytes(recv=size) if recv else self.meter.add_bytes(sent=size)
        return ops


class Pipeline:
    """One stage's side of the pipeline: a schedule per microbatch shape (the last batch of
    an epoch may be smaller), the optimizer of its own parameters, its meter."""

    def __init__(
        self, ctx: WorkerContext, module: nn.Module, plan: Plan, params: Any, shapes: list
    ) -> None:
        self.ctx, self.module, self.plan, self.params = ctx, module, plan, params
        self.stage = ctx.rank
        self.meter = Meter()
        self.opt = make_optimizer(module.parameters(), ctx.cfg.optimizer)
        self.shapes = shapes  # per-sample shape at every boundary between pieces
        self.schedules: dict[int, Any] = {}

    @property
    def first(self) -> bool:
        return self.stage == 0

    @property
    def last(self) -> bool:
        return self.stage == self.plan.stages - 1

    def schedule_for(self, batch: int) -> Any:
        if batch not in self.schedules:
            self.schedules[batch] = self.build_schedule(batch)
        return self.schedules[batch]

    def build_schedule(self, batch: int) -> Any:
        """Static shapes (no shape exchange between stages): the microbatch's tensors at
        this stage's two boundaries; requires_grad marks which of them carry a gradient."""
        m = microbatch_count(batch, self.params.microbatches)
        begin, end = self.plan.bounds[self.stage]
        stage = CountedStage(
            self.module,
            self.stage,
            self.plan.stages,
            self.ctx.device,
            input_args=self.example(batch // m, begin, grad=not self.first),
            output_args=self.example(batch // m, end, grad=True),
            meter=self.meter,
        )
        # 1F1B warms up one microbatch per stage; a short last batch with fewer
        # microbatches than stages runs fill-drain (the same gradients).
        one_f_one_b = self.params.schedule == "1f1b" and m >= self.plan.stages
        kind = Schedule1F1B if one_f_one_b else ScheduleGPipe
        return kind(stage, m, loss_fn=self.timed_loss, scale_grads=True)

    def example(self, size: int, boundary: int, grad: bool) -> torch.Tensor:
        shape = (size, *self.shapes[boundary])
        return torch.empty(shape, device=self.ctx.device, requires_grad=grad)

    def timed_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with self.meter.busy():
            return F.cross_entropy(logits, target)

    def step(self, idx: np.ndarray) -> float:
        """One optimizer step on the global batch `idx`; the batch's mean loss on the last
        stage, NaN elsewhere."""
        index = torch.from_numpy(idx).to(self.ctx.device)
        args = (self.ctx.data.x_train[index],) if self.first else ()
        losses: list[torch.Tensor] = []
        kwargs = {"target": self.ctx.data.y_train[index], "losses": losses} if self.last else {}
        self.opt.zero_grad()
        self.run_counted(self.schedule_for(len(idx)), args, kwargs)
        self.opt.step()
        return float(torch.stack(losses).detach().mean()) if self.last else math.nan

    def restore(self) -> dict | None:
        """On a resumed run, this stage's parameters, optimizer state and meter totals from
        its checkpoint; the checkpoint's position (None on a fresh start)."""
        state = self.ctx.restore(self.kept())
        if state is None:
            return None
        self.meter.carry(state["extra"]["meter"])
        return state["position"]

    def save(self, at: int, position: dict) -> None:
        """This stage's checkpoint at step `at`; every stage writes one at the same step."""
        extra = {"meter": self.meter.totals(), "cuts": list(self.plan.cuts)}
        self.ctx.save_checkpoint(at, "step", self.kept(), position, extra)

    def kept(self) -> dict:
        return {"stage": self.module, "optimizer": self.opt}

    def run_counted(self, schedule: Any, args: tuple, kwargs: dict) -> None:
        """Run one step of the schedule; its cut bytes and the seconds this stage waited
        for its neighbours go through ctx.comm.count."""
        meter, mark = self.meter, len(self.meter.intervals)
        sent, recv = meter.sent, meter.recv
        begin = time.perf_counter()
        schedule.step(*args, return_outputs=False, **kwargs)
        seconds = time.perf_counter() - begin
        meter.step_seconds += seconds
        waited = max(0.0, seconds - meter.busy_seconds(since=mark))
        self.ctx.comm.count(meter.sent - sent, meter.recv - recv, waited)


def run_stage(ctx: WorkerContext, params: Any) -> None:
    """What each stage process runs under schedule gpipe or 1f1b."""
    model = ctx.build_model()
    layers = model_layers(model)
    plan = agree_plan(ctx, params.split, params.microbatches, layers)
    owned = [owned_names(model, stage_module(layers, b)) for b in plan.bounds]
    shapes = boundary_shapes(layers, ctx.data.input_shape)
    pipe = Pipeline(ctx, stage_module(layers, plan.bounds[ctx.rank]), plan, params, shapes)

    def sync_eval(**where: int) -> None:
        gather_on_lead(ctx, model, owned)
        if ctx.is_lead:
            ctx.evaluate(model, **where)

    done = train_loop(ctx, pipe.step, sync_eval, pipe)
    gather_on_lead(ctx, model, owned)
    stages = stats_on_lead(ctx, pipe.meter, plan.stages)
    record = plan_record(model, layers, plan, ctx.data.input_shape) if ctx.is_lead else None
    if record is not None:
        record["stages"] = stages
    ctx.recorder.phase("train_end", steps=done, pipeline=record)
    ctx.save_model(model)


def gather_on_lead(ctx: WorkerContext, model: nn.Module, owned: list[list[str]]) -> None:
    """Every stage sends its current parameters to the lead, which writes them into its
    copy of the whole model (for an evaluation and for model.pt)."""
    if not ctx.is_lead:
        ctx.comm.send(flat_of(model, owned[ctx.rank]), ctx.lead)
        return
    for stage, names in enumerate(owned):
        if stage != ctx.rank:
            buf = torch.empty_like(flat_of(model, names))
            ctx.comm.recv(buf, stage)
            load_flat(model, names, buf)


def stats_on_lead(ctx: WorkerContext, meter: Meter, stages: int) -> list[dict] | None:
    """Each stage's cut bytes, busy and step seconds, collected on the lead."""
    if not ctx.is_lead:
        ctx.comm.send(meter.as_tensor(), ctx.lead)
        return None
    records = []
    for stage in range(stages):
        values = meter.as_tensor()
        if stage != ctx.rank:
            ctx.comm.recv(values, stage)
        records.append(stage_record(stage, values))
    return records
