"""Distillation: M members train apart, then a larger target learns from their averaged
soft predictions.

Hinton, Vinyals and Dean 2015, "Distilling the knowledge in a neural network": the target
minimizes (1 - alpha) CE(target, y) + alpha T^2 KL(p_members || p_target), where p is a
softmax at temperature T and p_members the members' probabilities averaged (an ensemble's
soft labels), divided by (1 - alpha) + alpha T so that an SGD step on it is no larger than
one on the labels alone (see distill_loss). Zhang et al. 2018, "Deep mutual learning": with
`bidirectional: true` each member also learns from the target in phase 2, by the same loss
with the target's soft labels as its teacher.

    distlab run --strategy distill --workers 3 --set strategy.temperature=4
    distlab run --strategy distill --workers 3 --dataset digits --model mlp --epochs 2 \
        --set strategy.member_epochs=6
    distlab run --strategy distill --workers 3 --set strategy.bidirectional=true

Phase 1: rank r trains member r (`member_model`, default --model) alone for `member_epochs`
epochs, from seed S + r (S = --seed): with `member_data: all` it walks the whole training set
in the order of a centralized run with --seed S + r (so member r is that run, step for step,
for a model without dropout); with `member_data: shards` it walks its own IID share. No
message is sent while members train (but a barrier before each checkpoint).

Phase 2: --epochs epochs of the target (`target_model`, built from seed S, on rank 0, the
lead) over the whole training set in the centralized run's order for seed S; every rank
derives that order from the seed, so all members see the same batch. On each batch every
member's logits are gathered to the lead (counted: members x batch x classes x 4 bytes); with
`bidirectional` the lead broadcasts the target's logits back (batch x classes x 4, counted
once as the Communicator counts a broadcast). With alpha 0 the target is the centralized run
of `target_model`, step for step.

Record: the lead's step events are member 0's phase-1 steps (`stage: members`) then the
target's (`stage: target`, with the logits bytes of that step); eval events are the target's
(accuracy) with `member_accuracies` and `ensemble_accuracy` beside it; each member epoch ends
with a `members_eval` phase event carrying the same two figures. The ensemble's accuracy is
that of the members' averaged probabilities (temperature 1). model.pt is the target.

Checkpoints (--set checkpoint.every=N): N counts the lead's steps, the step numbers of its
record (member 0's, then the target's, one count through both phases); the members walk
apart, so each rank writes them at a consistent cut (distlab.strategies.walker). Each rank's
holds its member and the member's optimizer (the lead's also the target and its optimizer),
its random generators and its position (phase, epoch, batch, its own step count); the
ensemble's soft labels are recomputed by the members at every target step, so none are
kept. A run resumed from one ends as the uninterrupted run does, bit for bit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from distlab.data.partition import IidPartition, Partition, partition
from distlab.data.samplers import epoch_batches
from distlab.models import MODELS, build_model, count_parameters
from distlab.strategies.common import Schedule, own_schedule, sampler_schedule
from distlab.strategies.logits_traffic import logits_traffic, no_comm_analysis
from distlab.strategies.soft_labels import distill_loss, ensemble_teacher, evaluate_members
from distlab.strategies.spec import StrategyBase, StrategySpec
from distlab.strategies.walker import AFTER_EVAL, Walker
from distlab.training import make_optimizer

if TYPE_CHECKING:
    from distlab.config import RunConfig
    from distlab.runtime.context import WorkerContext


class Params(StrategyBase):
    """Members train apart (one per worker), then a larger target learns from their averaged
    soft predictions."""

    name: Literal["distill"] = "distill"
    member_epochs: int = Field(3, ge=1)
    """Phase 1: epochs each member trains alone; phase 2 (the target) trains --epochs."""
    temperature: float = Field(4.0, gt=0)
    """Softmax temperature T of the soft labels; must be > 0 (1 = plain probabilities)."""
    alpha: float = 0.5
    """Weight of the soft-label term in [0, 1]: (1 - alpha) CE + alpha T^2 KL, divided by
    (1 - alpha) + alpha T; 0 = the target trains alone on the labels."""
    bidirectional: bool = False
    """Deep mutual learning: in phase 2 the members also learn from the target's logits."""
    target_model: str = "vgg-small"
    """Model of the target trained in phase 2 on the lead rank."""
    member_model: str | None = None
    """Model of every member; default: --model."""
    member_data: Literal["all", "shards"] = "all"
    """What a member trains on: all (the whole set, its own seed and order) or shards (its
    own IID share of the set)."""

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, value: float) -> float:
        if not 0 <= value <= 1:
            raise ValueError(f"strategy.alpha must be in [0, 1] (got {value})")
        return value

    @field_validator("target_model", "member_model")
    @classmethod
    def _known_model(cls, value: str | None, info) -> str | None:
        if value is not None and value not in MODELS:
            allowed = ", ".join(sorted(MODELS))
            raise ValueError(f"unknown strategy.{info.field_name} {value!r} (allowed: {allowed})")
        return value


# --- data ------------------------------------------------------------------------------------


def member_shards(cfg: RunConfig, labels: np.ndarray) -> Partition:
    return partition(labels, cfg.workers, IidPartition(), cfg.seed)


def member_schedule(ctx: WorkerContext, params: Params, rank: int) -> Schedule:
    """Member r's batches: its IID shard, or the whole set in the order of seed S + r."""
    cfg, labels = ctx.cfg, ctx.labels()
    if params.member_data == "shards":
        return own_schedule(ctx, member_shards(cfg, labels).indices[rank], stream=rank)
    seed = cfg.seed + rank
    return lambda epoch: epoch_batches(cfg.sampler, labels, cfg.batch_size, epoch, seed, 0, 1)


# --- the two phases ----------------------------------------------------------------------------


class Distiller:
    """This rank's member (and, on the lead, the target) and the step count of both phases."""

    def __init__(self, ctx: WorkerContext, params: Params) -> None:
        cfg = ctx.cfg
        self.ctx, self.params = ctx, params
        name = params.member_model or cfg.model
        self.member = self.build(name, cfg.seed + ctx.rank)
        self.member_opt = make_optimizer(self.member.parameters(), cfg.optimizer)
        self.target = self.build(params.target_model, cfg.seed) if ctx.is_lead else None
        self.target_opt = (
            make_optimizer(self.target.parameters(), cfg.optimizer) if self.target else None
        )
        self.walker = Walker(ctx, self.kept)

    def build(self, name: str, seed: int) -> nn.Module:
        data = self.ctx.data
        return build_model(name, data.input_shape, data.classes, seed).to(self.ctx.device)

    def kept(self) -> dict:
        """A checkpoint's models and optimizers: the member's, and the target's on the lead."""
        kept = {"member": self.member, "member_opt": self.member_opt}
        if self.target is not None:
            kept |= {"target": self.target, "target_opt": self.target_opt}
        return kept

    def member_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict]:
        self.member_opt.zero_grad()
        loss = F.cross_entropy(self.member(x), y)
        loss.backward()
        self.member_opt.step()
        return float(loss.detach()), {}

    def target_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict]:
        """Members' logits to the lead, the target's update there, and with bidirectional
        the target's logits back and every member's update."""
        ctx, params, comm = self.ctx, self.params, self.ctx.comm
        with torch.set_grad_enabled(params.bidirectional):
            logits = self.member(x)
        before = comm.bytes_recv
        gathered = comm.gather(logits.detach().contiguous(), dst=ctx.lead)
        fields = {"logits_bytes_in": comm.bytes_recv - before}
        loss = own_loss = F.cross_entropy(logits.detach(), y)
        if self.target is not None:
            target_logits = self.target(x)
            teacher = ensemble_teacher(gathered, params.temperature)
            loss = distill_loss(target_logits, y, teacher, params)
        if params.bidirectional:
            before = comm.bytes_sent
            back = target_logits.detach() if self.target is not None else torch.empty_like(logits)
            comm.broadcast(back, src=ctx.lead)
            fields["logits_bytes_out"] = comm.bytes_sent - before
            own_loss = self.learn_from(logits, y, back)
        if self.target is not None:
            self.target_opt.zero_grad()
            loss.backward()
            self.target_opt.step()
        return float(loss.detach()) if self.target is not None else float(own_loss), fields

    def learn_from(self, logits: torch.Tensor, y: torch.Tensor, back: torch.Tensor):
        """Deep mutual learning: the member's update towards the target's soft labels."""
        teacher = F.softmax(back / self.params.temperature, 1)
        loss = distill_loss(logits, y, teacher, self.params)
        self.member_opt.zero_grad()
        loss.backward()
        self.member_opt.step()
        return loss.detach()

    def evaluate(self, epoch: int, phase: str) -> None:
        """Collective: member and ensemble accuracies on the lead's record, in a members_eval
        phase event after a member epoch, beside the target's eval event after a target one."""
        found = evaluate_members(self.ctx, self.member)
        if found is None:
            return
        members, ensemble = found
        where = {"member_accuracies": members, "ensemble_accuracy": ensemble, "epoch": epoch}
        if phase == "members":
            self.ctx.recorder.phase("members_eval", **where)
        else:
            self.ctx.evaluate(self.target, step=self.walker.done, **where)


def run(ctx: WorkerContext, params: Params) -> None:
    cfg = ctx.cfg
    own, shared = member_schedule(ctx, params, ctx.rank), sampler_schedule(ctx, 0, 1)
    mine = [len(own(e)) for e in range(params.member_epochs)]
    lead = [len(member_schedule(ctx, params, ctx.lead)(e)) for e in range(params.member_epochs)]
    distiller = Distiller(ctx, params)
    walker = distiller.walker
    at = walker.restore("members")
    if not ctx.resuming:  # a resumed run's "train" is in its event file already
        ctx.recorder.phase("train", total=sum(mine) + cfg.epochs * len(shared(0)), unit="step")
    walker.plan_phase(mine, lead, 0)
    start = (at["epoch"], at["batch"]) if at["phase"] == "members" else None
    train_phase(distiller, "members", own, params.member_epochs, start)
    if distiller.target is not None and at["phase"] == "members":
        record_target(ctx, distiller)
    # A frozen teacher predicts in eval mode; a member that learns from the target trains.
    distiller.member.train(params.bidirectional)
    target = [len(shared(e)) for e in range(cfg.epochs)]
    walker.plan_phase(target, target, sum(lead))
    start = (at["epoch"], at["batch"]) if at["phase"] == "target" else (0, 0)
    train_phase(distiller, "target", shared, cfg.epochs, start)
    ctx.recorder.phase("train_end", steps=walker.done)
    if distiller.target is not None:
        ctx.save_model(distiller.target)


def train_phase(
    distiller: Distiller, stage: str, schedule: Schedule, epochs: int, start: tuple | None
) -> None:
    """Epochs of one phase from `start` (epoch, batches of it done; None: the phase is
    over), each ending with the members' (and the target's) evaluation."""
    if start is None:
        return
    step = distiller.member_step if stage == "members" else distiller.target_step
    walker, (first, skip) = distiller.walker, start
    for epoch in range(first, epochs):
        walker.walk(schedule(epoch), step, epoch, stage, skip if epoch == first else 0)
        distiller.evaluate(epoch, stage)
        walker.save_due((epoch, AFTER_EVAL), {"phase": stage, "epoch": epoch + 1, "batch": 0})


def record_target(ctx: WorkerContext, distiller: Distiller) -> None:
    """What the summary needs beside the standard events: the two models' sizes, and the
    class count and members that the logits traffic's formula takes."""
    ctx.recorder.phase(
        "target",
        params=count_parameters(distiller.target),
        member_params=count_parameters(distiller.member),
        classes=ctx.data.classes,
        members=ctx.world,
    )


# --- the spec's answers -----------------------------------------------------------------------


def check(cfg: RunConfig) -> None:
    """Every member and the target walk whole batches, so split-batch's batch >= workers
    rule does not apply; evaluations are collectives at epoch ends."""
    if cfg.eval_every:
        raise ValueError(
            f"--eval-every does not apply to strategy distill (got {cfg.eval_every}): it "
            "evaluates the members, the ensemble and the target at every epoch end; use 0"
        )


def models_fit_data(cfg: RunConfig, data) -> None:
    """The members' and the target's models both fit the dataset's shapes (vgg-small needs
    images): refused before any process starts."""
    for name in (cfg.strategy.member_model or cfg.model, cfg.strategy.target_model):
        try:
            build_model(name, data.input_shape, data.classes, cfg.seed)
        except ValueError as exc:
            raise ValueError(f"strategy distill: {exc}") from None


def data_partition(cfg: RunConfig, labels: np.ndarray) -> Partition | None:
    """The members' IID shards under member_data shards; none when every member has all."""
    return member_shards(cfg, labels) if cfg.strategy.member_data == "shards" else None


def batch_meaning(cfg: RunConfig) -> str:
    return "per member and for the target (whole batches)"


def distill_summary(cfg: RunConfig, lead: list[dict]) -> dict:
    """Final member, ensemble and target accuracies, the two models, the logits traffic."""
    evals = [e for e in lead if e["kind"] == "eval"]
    last = evals[-1] if evals else {}
    members = [e for e in lead if e.get("phase") == "members_eval"]
    target = next((e for e in lead if e.get("phase") == "target"), {})
    params = cfg.strategy
    return {
        "member_model": params.member_model or cfg.model,
        "member_params": target.get("member_params"),
        "target_model": params.target_model,
        "target_params": target.get("params"),
        "member_accuracies_phase1": members[-1]["member_accuracies"] if members else None,
        "ensemble_accuracy_phase1": members[-1]["ensemble_accuracy"] if members else None,
        "member_accuracies": last.get("member_accuracies"),
        "ensemble_accuracy": last.get("ensemble_accuracy"),
        "target_accuracy": last.get("accuracy"),
        **logits_traffic(cfg, lead, target.get("classes")),
    }


SPEC = StrategySpec(
    "distill",
    Params,
    run,
    check=check,
    check_data=models_fit_data,
    data_partition=data_partition,
    comm_analysis=no_comm_analysis,
    batch_meaning=batch_meaning,
    extra_summary=distill_summary,
    network=None,
    no_compression="its members send soft labels (logits), not model updates",
    summary_rows=(
        ("ensemble accuracy", "ensemble_accuracy"),
        ("target accuracy", "target_accuracy"),
    ),
)
