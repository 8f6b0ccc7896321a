"""Gossip: decentralized SGD on a graph, no server; optionally personalized.

Lian et al. 2017, "Can decentralized algorithms outperform centralized algorithms? A case
study for decentralized parallel stochastic gradient descent" (D-PSGD): every worker takes
local SGD steps on its own batches and, every `period` steps, replaces its model with a
weighted mix of its own and its neighbours' models, x_i <- sum_j W[i, j] x_j. Boyd et al.
2006, "Randomized gossip algorithms": how fast the models agree is set by the spectral gap
of W. The graph and W live in distlab.topology (ring, torus, complete, star, random-k, an
edge-list file, or none: local training only); neighbours swap models point to point
through the counted `Communicator.exchange`, never a global allreduce.

    distlab run --strategy gossip --workers 4 --set strategy.topology=ring
    distlab run --strategy gossip --workers 8 --set strategy.topology=random-k \\
        --set strategy.degree=2 --set strategy.mixing=metropolis
    distlab run --strategy gossip --workers 8 --partition dirichlet --alpha 0.1 \\
        --epochs 48 --set strategy.personalized=true --set strategy.personal=ditto
    # the same with --set strategy.topology=none is the local-only baseline

Measurement. After each round's mixing (and at each evaluation) two counted allreduces build
the average model x_bar and the consensus distance (distlab.strategies.consensus): round
events carry `consensus_distance`, `mix_bytes` (this rank's exchange bytes), `measure_bytes`
(its measuring allreduces since the previous round) and the workers' mean loss of that step.
Evaluation measures x_bar on the global test set; model.pt is x_bar. The summary sets each
byte figure beside its formula (gossip_traffic.py).

Personalized (`personalized: true`): each worker holds out `local_test_fraction` of its own
part (the same split FedAvg's `local_test_fraction` makes) and keeps its own model; each
evaluation also reports every worker's personal model on its own held-out split, their mean
and worst. The personal model is the worker's own gossip model (`personal: mixed`), Ditto's
model trained toward it (`personal: ditto`), the gossip model under the worker's label prior
(`label_prior`) or a copy fine-tuned for `finetune` steps (FedAvg's code); `personal_head:
true` never mixes the last layer (FedPer): all in distlab.federated.personalization.

Curvature mixing (`mixing: curvature`, distlab.strategies.mixing) projects a worker's move
toward its neighbours off the top-k Hessian eigenvectors of its own recent loss.

Compressed (--set compress.kind=topk ...): CHOCO-gossip (distlab.strategies.choco), each
worker sends its compressed difference to the public copy its neighbours hold of it.

Checkpoints (--set checkpoint.every=N) count rounds: every worker writes its model and
optimizer, x_bar, its round, recent batches, curvature directions and Ditto's model where a
round ends. The graph, W and the curvature generators are functions of the seed and the
round, so a resumed run ends bit for bit where an uninterrupted one does.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from distlab import topology
from distlab.data.partition import Partition
from distlab.federated.clients import ClientData, split_clients
from distlab.federated.personalization import Personal, check_personal, head_size
from distlab.strategies import choco, consensus, gossip_traffic, lockstep, mixing
from distlab.strategies.common import Schedule, train_epochs
from distlab.strategies.periodic import Plan
from distlab.strategies.spec import StrategyBase, StrategySpec, check_data_parallel
from distlab.training import compute_gradients, make_optimizer

if TYPE_CHECKING:
    from distlab.config import RunConfig
    from distlab.runtime.context import WorkerContext


class Params(StrategyBase):
    """Decentralized SGD: local steps, then a gossip round with the graph neighbours."""

    name: Literal["gossip"] = "gossip"
    topology: str = "ring"
    """ring, torus (workers = rows x cols, both >= 2), complete, star (hub: worker 0),
    random-k (a new seeded graph each round), file (strategy.graph_file), or none (no
    mixing: local training only)."""
    mixing: Literal["uniform", "metropolis", "curvature"] = "uniform"
    """Mixing weights: uniform over the worker and its neighbours, Metropolis-Hastings
    (doubly stochastic on any graph: the average model is kept), or curvature: uniform
    weights, but a worker moves toward its neighbours only outside the top-k Hessian
    eigenvectors of its own loss (k = 0 is uniform)."""
    k: int = Field(1, ge=0)
    """mixing curvature: high-curvature directions kept out of the move toward neighbours."""
    curvature_every: int = Field(10, ge=1)
    """mixing curvature: gossip rounds between two estimates of the top-k eigenvectors."""
    curvature_iterations: int = Field(20, ge=1)
    """mixing curvature: Lanczos iterations (Hessian-vector products) per estimate, >= k."""
    curvature_batches: int = Field(1, ge=1)
    """mixing curvature: the worker's most recent training batches the loss is taken on."""
    period: int = Field(1, ge=1)
    """Local SGD steps between gossip rounds (1 = D-PSGD)."""
    gamma: float | None = Field(None, gt=0, le=1)
    """With compress.kind: CHOCO-gossip's consensus step size (choco.py; 0.1 when left out)."""
    degree: int = Field(2, ge=1)
    """random-k: peers each worker draws per round (links are two-way, so some get more)."""
    graph_file: str | None = None
    """topology file: an edge list, one 'i j' pair of worker ranks per line ('#' comments)."""
    personalized: bool = False
    """Keep each worker's own model and report its accuracy on its own held-out split."""
    local_test_fraction: float = Field(0.2, gt=0, lt=1)
    """personalized: fraction of each worker's part held out as its local test split."""
    personal: Literal["mixed", "ditto"] = "mixed"
    """personalized: the model each worker is tested with. mixed: its own gossip model;
    ditto: a model v of its own, trained on the same batches on its loss + ditto_lambda/2
    ||v - w||^2 toward its gossip model w, and never sent (Ditto, Li et al. 2021)."""
    ditto_lambda: float = Field(0.1, ge=0)
    """personal ditto: the pull toward the gossip model (0: v is trained on its own data alone)."""
    label_prior: bool = False
    """personalized, personal mixed: test the gossip model with its logits shifted by
    log(p_i / p_mean), p_i the worker's training-label frequencies (add-one smoothed), p_mean
    their mean over the workers (one allreduce at the start): Bayes' rule for a change of
    class priors (Saerens, Latinne and Decaestecker 2002)."""
    personal_head: bool = False
    """personalized: never mix the last layer (the classifier head); each worker keeps its
    own head and gossips the rest (FedPer, Arivazhagan et al. 2019, on a graph)."""
    finetune: int = Field(0, ge=0)
    """personalized: local steps on a copy of the worker's model, on its own training split,
    before each local test (FedAvg's finetune; 0 = test the model as it is)."""

    @field_validator("topology")
    @classmethod
    def _topology(cls, value: str) -> str:
        if value not in topology.TOPOLOGIES:
            allowed = ", ".join(topology.TOPOLOGIES)
            raise ValueError(f"unknown topology {value!r} (allowed: {allowed})")
        return value


# --- data -------------------------------------------------------------------------------------


def personal_data(cfg: RunConfig, labels: np.ndarray) -> ClientData:
    """Each worker's part, less its held-out local test split (FedAvg's split_clients)."""
    own = lockstep.own_parts(cfg, labels).indices
    return split_clients(own, cfg.strategy.local_test_fraction, cfg.seed)


def schedules_of(ctx: WorkerContext, data: ClientData | None) -> list[Schedule]:
    """Every worker's batches; personalized runs walk their training split, cycled so that
    every worker reaches every gossip round."""
    if data is None:
        return lockstep.worker_schedules(ctx)
    return lockstep.cycled_schedules(ctx, data.train)


def personal_of(ctx: WorkerContext, data: ClientData | None) -> Personal | None:
    """A personalized run's worker: its Ditto model, label prior or fine-tuning."""
    if data is None:
        return None
    p = ctx.cfg.strategy
    ditto = p.ditto_lambda if p.personal == "ditto" else None
    return Personal(ctx, data, ditto, p.label_prior, p.finetune)


# --- one worker -------------------------------------------------------------------------------


class GossipWorker:
    """One worker's model and optimizer; `step` is train_epochs' step function. `shown` is
    the average model, rebuilt at every measurement, which is evaluated and saved."""

    def __init__(self, ctx: WorkerContext, plan: Plan, sizes: list[int], data):
        self.ctx, self.plan, self.sizes = ctx, plan, sizes
        self.model, self.shown = ctx.build_model(), ctx.build_model()
        self.opt = make_optimizer(self.model.parameters(), ctx.cfg.optimizer)
        keep = head_size(self.model) if ctx.cfg.strategy.personal_head else 0
        self.mixed_size = sum(p.numel() for p in self.model.parameters()) - keep
        self.mixer = mixing.Mixer(ctx, self.model, self.mixed_size)
        self.personal = personal_of(ctx, data)
        self.done = self.round = self.round_first = 0
        self.measured = 0  # bytes of the measuring allreduces since the last round event
        self.round_start = time.perf_counter()

    def rounds_at(self, done: int) -> tuple[str, int] | None:
        """train_epochs' checkpoint count: the round that step `done` ended, if any."""
        return ("round", self.round) if self.plan.kind(done) == "average" else None

    def state_dict(self) -> dict:
        """What a checkpoint holds of this worker (the random generators go besides; the
        label shift is computed again at the start)."""
        state = {
            "model": self.model.state_dict(),
            "shown": self.shown.state_dict(),
            "optimizer": self.opt.state_dict(),
            "counts": [self.done, self.round, self.round_first],
            **self.mixer.state_dict(),
        }
        if self.personal is not None and self.personal.ditto is not None:
            state["ditto"] = self.personal.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.shown.load_state_dict(state["shown"])
        self.opt.load_state_dict(state["optimizer"])
        self.done, self.round, self.round_first = state["counts"]
        self.mixer.load_state_dict(state)
        if self.personal is not None:
            self.personal.load_state_dict(state.get("ditto"))

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        self.done += 1
        if self.personal is not None:
            self.personal.step(x, y, self.model)  # Ditto: toward w before its own step
        loss = compute_gradients(self.model, x, y)
        self.opt.step()
        self.mixer.remember(x, y)
        kind = self.plan.kind(self.done)  # average: a gossip round; eval-average: measure
        if kind == "local":
            return loss, self.sizes[self.done - 1]
        mixed = 0
        if kind == "average":
            self.round += 1
            mixed = self.mixer.mix(self.round)
        loss, distance, moved = consensus.measure(self.ctx, self.model, self.shown, loss, len(y))
        self.measured += moved
        if kind == "average":
            self.record_round(loss, distance, mixed)
        if self.plan.evaluates(self.done):
            self.evaluate()
        return loss, self.sizes[self.done - 1]

    def record_round(self, loss: float, distance: float, mixed: int) -> None:
        samples = sum(self.sizes[self.round_first : self.done])
        now = time.perf_counter()
        self.ctx.recorder.round(
            self.round,
            loss,
            samples,
            now - self.round_start,
            step=self.done,
            consensus_distance=distance,
            mix_bytes=mixed,
            measure_bytes=self.measured,
            mixed_params=self.mixed_size,
        )
        # A checkpoint falls only at a round's end, after this: `measured` is 0 in every one.
        self.round_start, self.round_first, self.measured = now, self.done, 0

    def evaluate(self) -> None:
        """The average model on the global test set (lead only), with the workers' own
        models on their own held-out splits when personalized."""
        extra = self.personal.accuracies(self.model) if self.personal is not None else {}
        if self.ctx.is_lead:
            epoch = (self.done - 1) // self.plan.steps_per_epoch
            self.ctx.evaluate(self.shown, step=self.done, epoch=epoch, **extra)


def run(ctx: WorkerContext, params: Params) -> None:
    data = personal_data(ctx.cfg, ctx.labels()) if params.personalized else None
    schedules = schedules_of(ctx, data)
    own = schedules[ctx.rank]
    plan = make_plan(ctx.cfg, len(own(0)))
    worker = GossipWorker(ctx, plan, lockstep.global_samples(schedules, ctx.cfg.epochs), data)
    train_epochs(ctx, worker.shown, worker.step, own, False, {"worker": worker}, worker.rounds_at)


def make_plan(cfg: RunConfig, steps_per_epoch: int) -> Plan:
    """local-sgd's plan without warmup: a round every `period` steps and at the last step;
    a measurement only (eval-average) at an evaluation between rounds."""
    return Plan(steps_per_epoch, cfg.epochs, cfg.strategy.period, 0, cfg.eval_every)


# --- the spec's answers -----------------------------------------------------------------------


def check(cfg: RunConfig) -> None:
    """Rules that span several fields; builds the graph once so a bad one fails here."""
    p = cfg.strategy
    check_personal(p, {"topology none": p.topology == "none"})
    mixing.check_curvature(p)
    choco.check(cfg)
    if p.graph_file is not None and p.topology != "file":
        raise ValueError(
            f"strategy.graph_file applies to topology file only (topology is {p.topology!r})"
        )
    own_parts = p.personalized or cfg.partition.scheme != "iid"
    if not own_parts:
        check_data_parallel(cfg)
    elif cfg.sampler != "split-batch":
        raise ValueError(
            f"--sampler {cfg.sampler} does not apply to a gossip run where each worker walks "
            "its own part (personalized, or a non-IID --partition); leave --sampler out"
        )
    adj = mixing.round_graph(cfg, 1)
    if p.topology not in ("none", "random-k"):
        topology.check_connected(adj, f"topology {p.topology}")


def data_partition(cfg: RunConfig, labels: np.ndarray) -> Partition:
    if cfg.strategy.personalized:
        return lockstep.own_parts(cfg, labels)
    return lockstep.data_partition(cfg, labels)


def batch_meaning(cfg: RunConfig) -> str:
    if cfg.strategy.personalized:
        return "per worker (its own part)"
    return lockstep.batch_meaning(cfg)


def gossip_summary(cfg: RunConfig, lead: list[dict]) -> dict:
    """The graph (spectral gap of W, degrees), the final consensus distance, the bytes per
    round beside their formulas (gossip_traffic), and, personalized, the workers' mean and
    worst accuracy on their own held-out splits."""
    rounds = [e for e in lead if e["kind"] == "round"]
    evals = [e for e in lead if e["kind"] == "eval"]
    if not rounds:
        return {"consensus_distance": None}
    deg = mixing.degrees(cfg, len(rounds))
    train = next(e for e in lead if e.get("phase") == "train")
    plan = make_plan(cfg, train["total"] // cfg.epochs)
    out = {
        **mixing.graph_summary(cfg, deg),
        "consensus_distance": rounds[-1].get("consensus_distance"),
        **gossip_traffic.traffic_summary(cfg, lead, rounds, deg, plan),
    }
    if cfg.strategy.personalized and evals:
        out["local_accuracy_mean"] = evals[-1].get("local_accuracy_mean")
        out["local_accuracy_worst"] = evals[-1].get("local_accuracy_worst")
    return out


SPEC = StrategySpec(
    "gossip",
    Params,
    run,
    check=check,
    check_data=mixing.model_fits_data,
    data_partition=data_partition,
    comm_analysis=gossip_traffic.comm_analysis,
    batch_meaning=batch_meaning,
    extra_summary=gossip_summary,
    uses_partition=True,  # a non-IID --partition gives each worker its own part
    network="gossip",
    summary_rows=(
        ("bytes/round measured", "bytes_per_round_measured"),
        ("bytes/round analytic", "bytes_per_round_analytic"),
        ("consensus distance", "consensus_distance"),
        ("spectral gap", "spectral_gap"),
        ("mean local accuracy", "local_accuracy_mean"),
        ("worst local accuracy", "local_accuracy_worst"),
    ),
)
