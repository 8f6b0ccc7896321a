"""Byzantine workers in data-parallel training (allreduce, param-server) and the robust
combination of their gradients.

A fraction of the worker ranks attack from step attack.start on: in place of its honest
gradient an attacker sends one crafted by transforms/attacks.py (sign-flip, gaussian,
scaling, ALIE of Baruch et al. 2019, IPM of Xie et al. 2019). The attacks are omniscient,
as in their papers: the attackers see the honest gradients of the same step. Which ranks
attack is drawn once from attack.seed (or the run's seed) among the W workers and recorded,
as ranks (0..W-1 under allreduce, 1..W under param-server), in the lead's `attack` phase
event and in every step event they act in (`attackers`).

The gathered gradients are combined by the strategy's `aggregator`, a rule of
strategies/aggregate.py (mean, median, trimmed mean, Krum, and the others registered there),
used through `start_aggregation`: the robust rules of Yin et al. 2018 and Blanchard et al.
2017 make sense only on the gradients one by one, never on their sum, so a step with an
attack or a robust rule moves every gradient instead of a summed one.

Every rank crafts with a generator seeded by (seed, step), so the replicas of allreduce
compute the same crafted rows and stay identical, and a resumed run crafts what an
uninterrupted one does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from pydantic import Field

from distlab.data.poison import flip_labels
from distlab.strategies.aggregate import (
    AggregatorOptions,
    get_aggregator,
    needed_updates,
    start_aggregation,
)
from distlab.strategies.spec import StrategyBase
from distlab.training import compute_gradients
from distlab.transforms.attacks import MODEL_ATTACKS, AttackSettings, craft, draw_attackers

if TYPE_CHECKING:
    from distlab.runtime.context import WorkerContext


# The attacks data-parallel workers carry: every model attack, and label flipping of an
# attacker's batches (y -> C - 1 - y, as data/poison.py does to a client's partition).
CARRIED = (*MODEL_ATTACKS, "label-flip")


class RobustParams(StrategyBase):
    """The combination rule of a data-parallel strategy's gradients."""

    aggregator: str = "mean"
    """How the workers' gradients are combined: mean (sample-weighted, the plain step),
    median, trimmed-mean, krum, or another rule of strategies/aggregate.py."""
    trim_ratio: float = Field(0.1, ge=0, lt=0.5)
    """Trimmed mean: fraction of largest and of smallest values dropped per coordinate."""
    krum_f: int = Field(0, ge=0)
    """Krum (and rules built on it): Byzantine workers tolerated; needs workers > 2f + 2."""


def options(params: RobustParams) -> AggregatorOptions:
    return AggregatorOptions(trim_ratio=params.trim_ratio, krum_f=params.krum_f)


def check_robust(cfg, workers: int) -> None:
    """The aggregator is known and defined on `workers` gradients; an attack draws at least
    one attacker and is one these strategies carry. Raises ValueError in one line."""
    params, attack = cfg.strategy, cfg.attack
    get_aggregator(params.aggregator)
    needed = needed_updates(params.aggregator, options(params))
    if workers < needed:
        raise ValueError(
            f"aggregator {params.aggregator} needs workers >= {needed} (workers > 2 * krum_f + 2 "
            f"for krum; got --workers {workers}, krum_f={params.krum_f})"
        )
    if active(cfg) and cfg.compress.names:
        what = f"attack.kind={attack.kind}" if attack.on else f"aggregator {params.aggregator}"
        raise ValueError(
            f"{what} with compress.kind={cfg.compress.kind} is not carried by {params.name}: "
            "its gradients are crafted and combined one by one, uncompressed"
        )
    if attack.kind == "none":
        return
    if attack.kind not in CARRIED:
        raise ValueError(
            f"attack.kind={attack.kind} is not carried by {params.name} (allowed: "
            f"{', '.join(CARRIED)}): a backdoor's success is measured by fedavg's evaluation"
        )
    if len(draw_attackers(workers, attack.fraction, 0)) == 0:
        raise ValueError(
            f"attack.fraction={attack.fraction} of {workers} workers draws no attacker "
            f"(allowed: fraction > {0.5 / workers:.4g} with --workers {workers})"
        )


def active(cfg, params=None) -> bool:
    """Whether a run moves every gradient apart: an attack or a rule other than the mean
    (the rule of `params` when given, else of the config's strategy)."""
    rule = getattr(params if params is not None else cfg.strategy, "aggregator", "mean")
    return cfg.attack.on or rule != "mean"


class Byzantine:
    """Which workers attack, how, and the rule that combines a step's gradients; `steps`
    (the steps combined so far) is the checkpointed state."""

    def __init__(self, ctx: WorkerContext, workers: int, first_rank: int = 0) -> None:
        cfg = ctx.cfg
        attack = cfg.attack
        self.seed = cfg.seed if attack.seed is None else attack.seed
        drawn = draw_attackers(workers, attack.fraction, self.seed) if attack.on else []
        self.mask = torch.zeros(workers, dtype=torch.bool)
        self.mask[[int(w) for w in drawn]] = True
        self.first_rank = first_rank
        self.attackers = [int(w) + first_rank for w in drawn]  # as ranks
        self.settings = AttackSettings.of(attack)
        self.crafts = attack.kind in MODEL_ATTACKS
        self.classes = ctx.data.classes
        self.start = attack.start
        self.rule, self.options = cfg.strategy.aggregator, options(cfg.strategy)
        self.steps = 0
        if ctx.is_lead and attack.on:
            ctx.recorder.phase(
                "attack",
                attack=attack.kind,
                attackers=self.attackers,
                fraction=attack.fraction,
                start=attack.start,
                aggregator=self.rule,
            )

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])

    def attacking(self, step: int) -> bool:
        return bool(self.attackers) and step >= self.start

    def labels(self, worker: int, y: torch.Tensor, step: int) -> torch.Tensor:
        """The labels `worker` trains on in `step`: flipped where it flips them."""
        if self.crafts or not self.attacking(step) or not bool(self.mask[worker]):
            return y
        return flip_labels(y, self.classes)

    def generator(self, step: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, step]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(state))

    def combine(self, rows: torch.Tensor, counts) -> tuple[torch.Tensor, dict]:
        """One step: `rows` (W, P) are every worker's mean gradient in worker order,
        `counts` their samples. The attackers' rows are crafted where they attack, then the
        rule combines them. Returns the gradient to apply and the step event's fields."""
        self.steps += 1
        fields = {}
        if self.attacking(self.steps):
            if self.crafts:
                rows = craft(rows, self.mask, self.settings, self.generator(self.steps))
            fields["attackers"] = self.attackers
        return self.aggregate(rows, counts), fields

    def aggregate(self, rows: torch.Tensor, counts) -> torch.Tensor:
        agg = start_aggregation(self.rule, self.options)
        agg.add(rows, np.asarray(counts, dtype=np.float64))
        return agg.result()


class Arrivals:
    """An asynchronous server's view for the attack and the rule: each worker's last
    gradient (crafted where it attacks). ALIE and IPM craft an arriving attacker's gradient
    from the last honest gradients the server has seen, the asynchronous equivalent of the
    honest gradients of a step; a robust rule combines the last gradient of every worker
    seen so far (the arriving one among them), and the update waits until the rule is
    defined on them."""

    def __init__(self, byz: Byzantine) -> None:
        self.byz = byz
        self.last: dict[int, torch.Tensor] = {}

    def state_dict(self) -> dict:
        return {"steps": self.byz.steps, "last": {str(w): g for w, g in self.last.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.byz.steps = int(state["steps"])
        self.last = {int(w): g for w, g in state["last"].items()}

    def crafted(self, worker: int, grad: torch.Tensor) -> torch.Tensor:
        """An arriving attacker's gradient, crafted among the last honest ones seen."""
        byz = self.byz
        honest = [g for w, g in sorted(self.last.items()) if not bool(byz.mask[w])]
        rows = torch.stack([*honest, grad])
        mask = torch.zeros(len(rows), dtype=torch.bool)
        mask[-1] = True
        return craft(rows, mask, byz.settings, byz.generator(byz.steps))[-1]

    def arrive(self, worker: int, grad: torch.Tensor) -> tuple[torch.Tensor | None, dict]:
        """The gradient to apply after `worker`'s arrives (None: not yet) and the fields."""
        byz = self.byz
        byz.steps += 1
        fields = {}
        if byz.attacking(byz.steps) and bool(byz.mask[worker]):
            grad = self.crafted(worker, grad) if byz.crafts else grad
            fields["attackers"] = [worker + byz.first_rank]
        self.last[worker] = grad
        if byz.rule == "mean":
            return grad, fields
        if len(self.last) < needed_updates(byz.rule, byz.options):
            return None, fields
        rows = torch.stack([self.last[w] for w in sorted(self.last)])
        return byz.aggregate(rows, np.ones(len(rows))), fields


def gathered_gradient_step(ctx: WorkerContext, model, opt, buf: torch.Tensor, byz: Byzantine):
    """allreduce's step with every gradient apart: each worker's mean gradient, loss and
    samples go to every worker in one counted all_gather, every rank crafts the attackers'
    rows and applies the rule (the same rows and generator everywhere, so the same step).
    `buf` is allreduce's flat gradient buffer with 2 extra slots. Returns the workers'
    mean loss, their samples and the step event's fields."""
    grads = buf[:-2]

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[float, int, dict]:
        loss = compute_gradients(model, x, byz.labels(ctx.rank, y, byz.steps + 1))
        n = float(len(y))
        buf[-2], buf[-1] = loss * n, n
        rows = torch.stack(ctx.comm.all_gather(buf.detach().clone())).cpu()
        counts = rows[:, -1].double().numpy()
        grad, fields = byz.combine(rows[:, :-2], counts)
        grads.copy_(grad.to(grads.device))
        opt.step()
        total = float(counts.sum())
        return float(rows[:, -2].double().sum()) / total, int(total), fields

    return step


def server_view(ctx: WorkerContext, workers: int, sync: bool) -> Byzantine | Arrivals | None:
    """param-server's attack and rule (workers are ranks 1..W): None when the run has
    neither; a Byzantine for a synchronous server, its Arrivals for an asynchronous one."""
    if not active(ctx.cfg):
        return None
    byz = Byzantine(ctx, workers, first_rank=1)
    return byz if sync else Arrivals(byz)


def server_sync(comm, size: int, workers: int, byz: Byzantine, apply) -> tuple[float, int, dict]:
    """A synchronous server's step with every gradient apart: one message from each worker
    (sample-weighted gradient, weighted loss, samples, version), the attackers' gradients
    crafted among the gathered ones, the rule's result passed to `apply`. Returns the mean
    loss, the samples and the step event's fields."""
    rows = []
    for src in range(1, workers + 1):
        buf = torch.empty(size)
        comm.recv(buf, src)
        rows.append(buf)
    stacked = torch.stack(rows)
    counts = stacked[:, -2]
    grad, fields = byz.combine(stacked[:, :-3] / counts[:, None], counts.double().numpy())
    apply(grad)
    return float(stacked[:, -3].sum() / counts.sum()), int(counts.sum()), fields


def worker_labels(ctx: WorkerContext, workers: int):
    """A param-server worker's labels: flipped from its own step attack.start on where it
    flips them (labels(y, step)); the server crafts every model attack."""
    if ctx.cfg.attack.kind != "label-flip" or not ctx.cfg.attack.on:
        return lambda y, step: y
    byz = Byzantine(ctx, workers, first_rank=1)
    return lambda y, step: byz.labels(ctx.rank - 1, y, step)
