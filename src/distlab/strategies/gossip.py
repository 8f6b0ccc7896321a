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

Measurement. After each round's mixing (and at each evaluation) one allreduce builds the
average model x_bar and a second the consensus distance, mean_i ||x_i - x_bar||; both are
counted, apart from the mixing: round events carry `consensus_distance`, `mix_bytes` (this
rank's exchange bytes), `measure_bytes` (its measuring allreduces since the previous round)
and the workers' mean loss of that step. Evaluation measures x_bar on the global test set;
model.pt is x_bar. The summary sets each byte figure beside its formula (`traffic_summary`).

Personalized (`personalized: true`): each worker holds out `local_test_fraction` of its own
part (the same split FedAvg's `local_test_fraction` makes) and keeps its own model; each
evaluation also reports every worker's personal model on its own held-out split, their mean
and worst. The personal model is the worker's own gossip model (`personal: mixed`) or, with
`personal: ditto`, a second model v that never leaves the worker: on every batch it takes
a step on its own loss + ditto_lambda/2 ||v - w||^2, w being the worker's gossip model
(Li, Hu, Beirami and Smith 2021, "Ditto: Fair and Robust Federated Learning Through
Personalization", Algorithm 1, with the gossip model in the server's place). Ditto doubles
the gradient computations per batch, not the data passes. `label_prior: true` tests the
own gossip model with its logits shifted by log(p_i / p_mean), the worker's label
frequencies against their mean over the workers (Bayes' rule for a change of class priors,
Saerens, Latinne and Decaestecker 2002; no extra training, one counted allreduce of the
frequencies at the start). `finetune: S` tests a copy after S local steps (FedAvg's
fine-tuning, the same code); `personal_head: true` never mixes the last layer (FedPer,
Arivazhagan et al. 2019). With `topology: none` this is the local-only baseline.

Curvature mixing (`mixing: curvature`): uniform weights, but worker i's move toward
sum_j W_ij x_j is projected off the top-k Hessian eigenvectors of its own loss on its most
recent batches (distlab.curvature: Lanczos on Hessian-vector products, `project_mix`),
re-estimated every `curvature_every` rounds. k = 0 is uniform mixing.

Checkpoints (--set checkpoint.every=N) count rounds, the unit of the summary: every worker
writes its model, optimizer, the average model, its round count, its most recent batches and
curvature directions and Ditto's model at the step that ends the round, after that step's
evaluation and events. The graph, W and the curvature generators are functions of the seed
and the round, so a resumed run ends bit for bit where an uninterrupted one does.
"""

from __future__ import annotations

import time
from collections import deque
from functools import cache
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from distlab import curvature, topology
from distlab.data.partition import Partition
from distlab.federated.clients import ClientData, LocalSpec, split_clients, train_client
from distlab.federated.evaluation import finetune_schedule, local_accuracy
from distlab.strategies import local_sgd
from distlab.strategies.common import Schedule, train_epochs
from distlab.strategies.spec import StrategyBase, StrategySpec, check_data_parallel
from distlab.training import compute_gradients, flat_params, make_optimizer, set_flat_params

if TYPE_CHECKING:
    from distlab.config import RunConfig
    from distlab.runtime.context import WorkerContext


# Stream tag of the curvature estimates' generators under the run seed.
CURVATURE_STREAM = 11


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


# --- the graph of each round ------------------------------------------------------------------


def round_graph(cfg: RunConfig, round_: int) -> np.ndarray:
    """The adjacency of gossip round `round_` (1-based); only random-k changes with it."""
    p = cfg.strategy
    return graph_of(p.topology, cfg.workers, p.degree, cfg.seed, round_, p.graph_file)


@cache
def graph_of(name: str, n: int, degree: int, seed: int, round_: int, path: str | None):
    # A fixed topology is built once: its round number does not matter.
    fixed = round_ if name == "random-k" else 0
    return topology.build_graph(
        name, n, degree=degree, seed=seed, round_=fixed, graph_file=path
    ).copy()


def round_mixing(cfg: RunConfig, round_: int) -> np.ndarray:
    """W of round `round_`; curvature mixing projects the uniform weights' move."""
    rule = "uniform" if cfg.strategy.mixing == "curvature" else cfg.strategy.mixing
    return topology.mixing_matrix(round_graph(cfg, round_), rule)


# --- data -------------------------------------------------------------------------------------


def personal_data(cfg: RunConfig, labels: np.ndarray) -> ClientData:
    """Each worker's part, less its held-out local test split (FedAvg's split_clients)."""
    parts = local_sgd.own_parts(cfg, labels).indices
    return split_clients(parts, cfg.strategy.local_test_fraction, cfg.seed)


def schedules_of(ctx: WorkerContext, data: ClientData | None) -> list[Schedule]:
    """Every worker's batches; personalized runs walk their training split, cycled so that
    every worker reaches every gossip round."""
    if data is None:
        return local_sgd.worker_schedules(ctx)
    steps = max(-(-len(t) // ctx.cfg.batch_size) for t in data.train)
    return [local_sgd.cycled_schedule(ctx, t, r, steps) for r, t in enumerate(data.train)]


# --- one worker -------------------------------------------------------------------------------


class GossipWorker:
    """One worker's model and optimizer; `step` is train_epochs' step function. `shown` is
    the average model, rebuilt at every measurement, which is evaluated and saved."""

    def __init__(self, ctx: WorkerContext, plan: local_sgd.Plan, sizes: list[int], data):
        self.ctx, self.plan, self.sizes, self.data = ctx, plan, sizes, data
        self.model, self.shown = ctx.build_model(), ctx.build_model()
        self.opt = make_optimizer(self.model.parameters(), ctx.cfg.optimizer)
        self.recent: deque = deque(maxlen=ctx.cfg.strategy.curvature_batches)
        self.directions: torch.Tensor | None = None  # curvature mixing: top-k eigenvectors
        keep = head_size(self.model) if ctx.cfg.strategy.personal_head else 0
        self.mixed_size = sum(p.numel() for p in self.model.parameters()) - keep
        self.scratch: torch.nn.Module | None = None  # the fine-tuning copy, built on use
        self.ditto = DittoModel(ctx) if ctx.cfg.strategy.personal == "ditto" else None
        self.shift = label_shift(ctx, data) if ctx.cfg.strategy.label_prior else None
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
            "recent": [list(batch) for batch in self.recent],
            "directions": self.directions,
        }
        if self.ditto is not None:
            state["ditto"] = {
                "model": self.ditto.model.state_dict(),
                "opt": self.ditto.opt.state_dict(),
            }
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.shown.load_state_dict(state["shown"])
        self.opt.load_state_dict(state["optimizer"])
        self.done, self.round, self.round_first = state["counts"]
        self.recent.extend(tuple(batch) for batch in state["recent"])
        self.directions = state["directions"]
        if self.ditto is not None:
            self.ditto.model.load_state_dict(state["ditto"]["model"])
            self.ditto.opt.load_state_dict(state["ditto"]["opt"])

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        self.done += 1
        if self.ditto is not None:
            self.ditto.step(x, y, self.model)  # toward w as it is before its own step
        loss = compute_gradients(self.model, x, y)
        self.opt.step()
        self.recent.append((x, y))
        kind = self.plan.kind(self.done)  # average: a gossip round; eval-average: measure
        if kind == "local":
            return loss, self.sizes[self.done - 1]
        mixed = self.gossip() if kind == "average" else 0
        loss, distance = self.measure(loss, len(y))
        if kind == "average":
            self.record_round(loss, distance, mixed)
        if self.plan.evaluates(self.done):
            self.evaluate()
        return loss, self.sizes[self.done - 1]

    def gossip(self) -> int:
        """One round: swap models with the neighbours, keep the W-weighted mix. Returns the
        bytes this rank moved."""
        self.round += 1
        comm, rank = self.ctx.comm, self.ctx.rank
        w = round_mixing(self.ctx.cfg, self.round)
        peers = topology.neighbours(round_graph(self.ctx.cfg, self.round), rank)
        before = comm.bytes_sent + comm.bytes_recv
        own = flat_params(self.model)
        shared = own[: self.mixed_size]
        received = zip(peers, comm.exchange(shared, peers), strict=True)
        if self.ctx.cfg.strategy.mixing == "curvature":
            mixed = self.curved_mix(shared, w[rank], received)
        else:
            mixed = shared * float(w[rank, rank])
            for peer, theirs in received:
                mixed += theirs * float(w[rank, peer])
        set_flat_params(self.model, torch.cat([mixed, own[self.mixed_size :]]))
        return comm.bytes_sent + comm.bytes_recv - before

    def curved_mix(self, own: torch.Tensor, weights: np.ndarray, received) -> torch.Tensor:
        """The uniform mix's move, own -> sum_j W_ij x_j, kept only outside the top-k
        eigenvectors of this worker's loss (re-estimated every `curvature_every` rounds)."""
        step = 1.0 - float(weights[self.ctx.rank])
        if step == 0:
            return own.clone()  # no neighbours this round
        if (self.round - 1) % self.ctx.cfg.strategy.curvature_every == 0:
            self.directions = self.estimate_directions()
        mean = torch.zeros_like(own)
        for peer, theirs in received:
            mean += theirs * (float(weights[peer]) / step)
        return curvature.project_mix(own, mean, self.directions, step)

    def estimate_directions(self) -> torch.Tensor:
        """Top-k Hessian eigenvectors (k x P) of the loss on the most recent batches, from a
        generator seeded by (seed, rank, round)."""
        p, cfg = self.ctx.cfg.strategy, self.ctx.cfg
        state = np.random.SeedSequence([cfg.seed, CURVATURE_STREAM, self.ctx.rank, self.round])
        generator = torch.Generator().manual_seed(int(state.generate_state(1)[0]))
        loss_fn = curvature.loss_on_batches(self.model, list(self.recent))
        params = list(self.model.parameters())
        _, vectors = curvature.top_eigenpairs(
            loss_fn, params, p.k, p.curvature_iterations, generator
        )
        return vectors

    def measure(self, loss: float, n: int) -> tuple[float, float]:
        """The average model into `shown` (one allreduce with this step's loss), then the
        consensus distance mean_i ||x_i - x_bar|| (one allreduce of a scalar). Returns the
        workers' sample-weighted mean loss of this step and the distance; the bytes go to
        `measured`, apart from the mixing's."""
        comm, world, own = self.ctx.comm, self.ctx.world, flat_params(self.model)
        before = comm.bytes_sent + comm.bytes_recv
        msg = torch.cat([own, torch.tensor([loss * n, float(n)])])
        comm.all_reduce(msg)
        average = msg[:-2] / world
        set_flat_params(self.shown, average.clone())
        distance = torch.tensor([float(torch.linalg.vector_norm(own - average))])
        comm.all_reduce(distance)
        self.measured += comm.bytes_sent + comm.bytes_recv - before
        return float(msg[-2]) / float(msg[-1]), float(distance[0]) / world

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
        extra = self.local_accuracies() if self.data is not None else {}
        if self.ctx.is_lead:
            epoch = (self.done - 1) // self.plan.steps_per_epoch
            self.ctx.evaluate(self.shown, step=self.done, epoch=epoch, **extra)

    def local_accuracies(self) -> dict:
        rank = self.ctx.rank
        mine = ClientData([self.data.train[rank]], [self.data.test[rank]])
        x, y = self.ctx.data.x_train, self.ctx.data.y_train
        acc = float(local_accuracy(self.personal_model(), mine, x, y)[0])
        everyone = self.ctx.comm.gather(torch.tensor([acc], dtype=torch.float64), self.ctx.lead)
        if everyone is None:
            return {}
        accs = [float(a[0]) for a in everyone]
        return {
            "local_accuracy_mean": float(np.mean(accs)),
            "local_accuracy_worst": min(accs),
            "local_accuracies": accs,
        }

    def personal_model(self) -> torch.nn.Module:
        """The worker's personal model (its gossip model, or Ditto's v), or a copy of it
        after `finetune` local steps on its own training split (the same schedule and local
        training as FedAvg's fine-tuning)."""
        cfg, rank = self.ctx.cfg, self.ctx.rank
        own = self.model if self.ditto is None else self.ditto.model
        if self.shift is not None:
            return Shifted(own, self.shift)
        steps = cfg.strategy.finetune
        if not steps:
            return own
        batches = finetune_schedule(self.data.train[rank], cfg.batch_size, steps, cfg.seed, rank)
        spec = LocalSpec(cfg.optimizer, cfg.batch_size, 1)
        x, y = self.ctx.data.x_train, self.ctx.data.y_train
        if self.scratch is None:
            self.scratch = self.ctx.build_model()
        train_client(self.scratch, flat_params(own).clone(), x, y, batches, spec)
        return self.scratch


def label_shift(ctx: WorkerContext, data: ClientData) -> torch.Tensor:
    """log(p_i / p_mean) per class: this worker's add-one smoothed training-label frequencies
    against their mean over the workers. Every worker walks its own part one batch per step,
    so with doubly stochastic mixing the shared model fits the mean of the workers' losses,
    whose class prior is p_mean; the worker's own test split has prior p_i."""
    labels = ctx.data.y_train[torch.from_numpy(data.train[ctx.rank])]
    counts = torch.bincount(labels, minlength=ctx.data.classes).double() + 1.0
    own = counts / counts.sum()
    mean = own.clone()
    ctx.comm.all_reduce(mean)
    # Every start (a resumed run's too) sends it: the summary's formula counts these events.
    ctx.recorder.phase("label_prior", classes=ctx.data.classes)
    return (own.log() - (mean / ctx.world).log()).float()


class Shifted(torch.nn.Module):
    """A model whose logits are moved by a fixed per-class vector (a personal prior)."""

    def __init__(self, model: torch.nn.Module, shift: torch.Tensor):
        super().__init__()
        self.model, self.shift = model, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + self.shift


class DittoModel:
    """Ditto's personal model v of one worker (Li, Hu, Beirami and Smith 2021, Algorithm 1):
    on each batch, v <- v - lr (grad F_k(v) + lambda (v - w)), with w the worker's gossip
    model. v starts from the same initial weights as w, uses the run's optimizer, and is
    never sent: only w is gossiped."""

    def __init__(self, ctx: WorkerContext):
        self.model = ctx.build_model()
        self.opt = make_optimizer(self.model.parameters(), ctx.cfg.optimizer)
        self.weight = ctx.cfg.strategy.ditto_lambda

    def step(self, x: torch.Tensor, y: torch.Tensor, shared: torch.nn.Module) -> None:
        compute_gradients(self.model, x, y)
        with torch.no_grad():
            for own, theirs in zip(self.model.parameters(), shared.parameters(), strict=True):
                own.grad.add_(own - theirs, alpha=self.weight)  # d/dv of lambda/2 ||v - w||^2
        self.opt.step()


def head_size(model: torch.nn.Module) -> int:
    """Parameters of the last layer that has any: the tail of the flat parameter vector."""
    layers = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    head = list(layers[-1].parameters(recurse=False))
    if [id(p) for p in head] != [id(p) for p in list(model.parameters())[-len(head) :]]:
        raise ValueError("strategy.personal_head needs a model whose last layer comes last")
    return sum(p.numel() for p in head)


def run(ctx: WorkerContext, params: Params) -> None:
    data = personal_data(ctx.cfg, ctx.labels()) if params.personalized else None
    schedules = schedules_of(ctx, data)
    own = schedules[ctx.rank]
    plan = make_plan(ctx.cfg, len(own(0)))
    worker = GossipWorker(ctx, plan, local_sgd.global_samples(schedules, ctx.cfg.epochs), data)
    keep = {"worker": worker}
    train_epochs(ctx, worker.shown, worker.step, own, False, keep, worker.rounds_at)


def make_plan(cfg: RunConfig, steps_per_epoch: int) -> local_sgd.Plan:
    """local-sgd's plan without warmup: a round every `period` steps and at the last step;
    a measurement only (eval-average) at an evaluation between rounds."""
    return local_sgd.Plan(steps_per_epoch, cfg.epochs, cfg.strategy.period, 0, cfg.eval_every)


# --- the spec's answers -----------------------------------------------------------------------


def check(cfg: RunConfig) -> None:
    """Rules that span several fields; builds the graph once so a bad one fails here."""
    p = cfg.strategy
    for key in ("finetune", "personal_head", "label_prior"):
        if getattr(p, key) and not p.personalized:
            raise ValueError(f"strategy.{key} applies to personalized runs; set personalized=true")
    check_personal(p)
    check_curvature(p)
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
    adj = round_graph(cfg, 1)
    if p.topology not in ("none", "random-k"):
        topology.check_connected(adj, f"topology {p.topology}")


def check_personal(p: Params) -> None:
    if p.personal != "mixed" and not p.personalized:
        raise ValueError(
            f"strategy.personal {p.personal} applies to personalized runs; set personalized=true"
        )
    # Compared with the default: a config read back from config.json sets every key.
    if p.personal != "ditto" and p.ditto_lambda != Params.model_fields["ditto_lambda"].default:
        raise ValueError(
            f"strategy.ditto_lambda applies to personal ditto only (personal is {p.personal!r})"
        )
    # A model trained on the worker's own labels already carries its prior: no second shift.
    trained = {
        "personal ditto": p.personal == "ditto",
        "personal_head": p.personal_head,
        "finetune": bool(p.finetune),
        "topology none": p.topology == "none",
    }
    clash = [name for name, on in trained.items() if on]
    if p.label_prior and clash:
        raise ValueError(
            f"strategy.label_prior shifts a model trained on every worker's data; drop "
            f"{clash[0]} (a model trained on the worker's own labels already has its prior)"
        )


def check_curvature(p: Params) -> None:
    keys = ("k", "curvature_every", "curvature_iterations", "curvature_batches")
    # Compared with the defaults: a config read back from config.json sets every key.
    stray = [key for key in keys if getattr(p, key) != Params.model_fields[key].default]
    if p.mixing != "curvature" and stray:
        raise ValueError(
            f"strategy.{stray[0]} applies to mixing curvature only (mixing is {p.mixing!r})"
        )
    if p.mixing == "curvature" and p.curvature_iterations < p.k:
        raise ValueError(
            f"strategy.curvature_iterations ({p.curvature_iterations}) must be >= k ({p.k})"
        )
    if p.mixing == "curvature" and p.personal_head:
        raise ValueError("mixing curvature projects the whole model; drop personal_head")


def data_partition(cfg: RunConfig, labels: np.ndarray) -> Partition:
    if cfg.strategy.personalized:
        return local_sgd.own_parts(cfg, labels)
    return local_sgd.data_partition(cfg, labels)


def batch_meaning(cfg: RunConfig) -> str:
    if cfg.strategy.personalized:
        return "per worker (its own part)"
    return local_sgd.batch_meaning(cfg)


def degrees(cfg: RunConfig, rounds: int) -> np.ndarray:
    """Per round (rows) and worker (columns), the number of neighbours it swaps with."""
    return np.array([round_graph(cfg, r).sum(axis=1) for r in range(1, rounds + 1)])


def comm_analysis(cfg: RunConfig, per_rank: dict, params: int, units: int) -> dict:
    """All traffic per worker per gossip round, mean over the workers. Its formula
    (bytes_per_round_analytic) is set beside it in gossip_summary: it needs the lead's events
    (the epoch length behind the measurements, the mixed parameter count), which the totals
    here do not hold."""
    if cfg.workers == 1:
        return {}  # one worker exchanges nothing: there is no traffic to set beside a formula
    workers = list(per_rank.values())
    measured = sum(w["bytes_sent"] + w["bytes_recv"] for w in workers) / len(workers)
    return {
        "bytes_per_round_measured": round(measured / units, 1),
        "bytes_per_round_scope": "per worker per round (mean over workers)",
    }


def gossip_summary(cfg: RunConfig, lead: list[dict]) -> dict:
    """The graph (spectral gap of W, degrees), the final consensus distance, the bytes per
    round beside their formulas (traffic_summary), and, personalized, the workers' mean and
    worst accuracy on their own held-out splits."""
    rounds = [e for e in lead if e["kind"] == "round"]
    evals = [e for e in lead if e["kind"] == "eval"]
    if not rounds:
        return {"consensus_distance": None}
    deg = degrees(cfg, len(rounds))
    gaps = [topology.spectral_gap(round_mixing(cfg, r)) for r in range(1, len(rounds) + 1)]
    out = {
        "topology": cfg.strategy.topology,
        "mixing": cfg.strategy.mixing,
        "spectral_gap": round(float(np.mean(gaps)), 6),
        "mean_degree": round(float(deg.mean()), 3),
        "consensus_distance": rounds[-1].get("consensus_distance"),
        **traffic_summary(cfg, lead, rounds, deg),
    }
    if cfg.strategy.personalized and evals:
        out["local_accuracy_mean"] = evals[-1].get("local_accuracy_mean")
        out["local_accuracy_worst"] = evals[-1].get("local_accuracy_worst")
    return out


def measurement_bytes(params: int) -> int:
    """What one rank counts for one measurement: the allreduce of its P parameters with the
    step's loss and sample count (P + 2 float32, handed in and got back), and that of its
    distance to the average (one float32)."""
    return 2 * (params + 2) * 4 + 2 * 4


def traffic_summary(cfg: RunConfig, lead: list[dict], rounds: list[dict], deg) -> dict:
    """Per gossip round, each measured figure beside its formula (M: the parameters mixed,
    P unless personal_head):
    - mix_bytes: the lead worker's exchange, its degree x 2 x M x 4;
    - measure_bytes: the lead worker's measuring allreduces (plan_traffic);
    - bytes (comm_analysis's, mean over workers): all traffic, the workers' mean degree x 2 x
      M x 4 plus the measurements and the rest of plan_traffic."""
    if cfg.workers == 1:
        return {}  # as comm_analysis: one worker exchanges nothing
    n, mixed = len(rounds), rounds[-1]["mixed_params"]
    measuring, other = plan_traffic(cfg, lead, rounds[-1]["step"])
    measured = [e.get("measure_bytes") for e in rounds]
    lead_degree, mean_degree = float(deg[:, rounds[0]["rank"]].mean()), float(deg.mean())
    return {
        "mix_bytes_per_round_measured": round(float(np.mean([e["mix_bytes"] for e in rounds])), 1),
        "mix_bytes_per_round_analytic": round(lead_degree * 2 * mixed * 4, 1),
        # None for a run recorded before round events carried measure_bytes
        "measure_bytes_per_round_measured": (
            None if None in measured else round(sum(measured) / n, 1)
        ),
        "measure_bytes_per_round_analytic": round(measuring / n, 1),
        "bytes_per_round_analytic": round(mean_degree * 2 * mixed * 4 + (measuring + other) / n, 1),
    }


def plan_traffic(cfg: RunConfig, lead: list[dict], last_step: int) -> tuple[int, int]:
    """Bytes every worker counts up to step `last_step` besides the mixing: (measuring,
    other). Measuring: measurement_bytes(P) after each round, and at each evaluation between
    rounds. Other, personalized runs: 16 per evaluation (each worker's float64 accuracy
    gathered to the lead, 8 bytes sent by every worker and 8 x workers received by the lead)
    and, at each start of the run, label_prior's allreduce of the class frequencies (2 x
    classes x 8)."""
    params = next(e["params"] for e in lead if e.get("phase") == "start")
    train = next(e for e in lead if e.get("phase") == "train")
    plan = make_plan(cfg, train["total"] // cfg.epochs)
    kinds = [plan.kind(s) for s in range(1, last_step + 1)]
    measurements = kinds.count("average") + kinds.count("eval-average")
    other = sum(2 * e["classes"] * 8 for e in lead if e.get("phase") == "label_prior")
    if cfg.strategy.personalized:
        other += 16 * sum(plan.evaluates(s) for s in range(1, last_step + 1))
    return measurements * measurement_bytes(params), other


def model_fits_data(cfg: RunConfig, data) -> None:
    """The model fits the data, and curvature mixing's k is at most its parameter count:
    both known only once the model is built, still before any process starts."""
    from distlab.models import build_model

    model = build_model(cfg.model, data.input_shape, data.classes, cfg.seed)
    if cfg.strategy.mixing == "curvature":
        from distlab.curvature import check_k

        check_k(cfg.strategy.k, sum(p.numel() for p in model.parameters()))


SPEC = StrategySpec(
    "gossip",
    Params,
    run,
    check=check,
    check_data=model_fits_data,
    data_partition=data_partition,
    comm_analysis=comm_analysis,
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
