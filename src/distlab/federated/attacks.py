"""Attacking clients of a federated run, at the update seam (seam.py) and in their data.

Which clients attack is drawn once from attack.seed (else the run's seed) and recorded in
the lead's `attack` phase event, the partition record and, per round, the round event's
`attackers` (those of the round's clients). A model attack (transforms/attacks.py) replaces
what an attacker sends, from round attack.start on, on the server, so it acts the same under
every executor. A data attack (data/poison.py) changes what an attacker trains on: every rank
that trains clients poisons the same samples of its copy of the dataset, so it runs where
distlab builds the clients' data (vectorized, sequential, processes).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch

from distlab.data.poison import poison, trigger_value, triggered
from distlab.federated.clients import client_partition
from distlab.federated.seam import RoundTransform
from distlab.transforms.attacks import AttackSettings, craft, draw_attackers

if TYPE_CHECKING:
    from distlab.config import RunConfig
    from distlab.data.partition import Partition
    from distlab.federated.clients import ClientData
    from distlab.federated.executors import ClientSetup
    from distlab.federated.types import Aggregation, Updates
    from distlab.runtime.context import WorkerContext

# Executors whose clients train on data this run builds (the others' clients load their own:
# a deployed SuperNode, a board fed over the serial line).
DATA_EXECUTORS = ("vectorized", "sequential", "processes")
ATTACK_STREAM = 0xA77  # the model attacks' random draws, apart from the run's other streams
EVAL_BATCH = 1000


def run_attackers(cfg: RunConfig) -> np.ndarray:
    """The clients that attack the run (sorted ids); empty when no attack is on."""
    a = cfg.attack
    if not a.on:
        return np.zeros(0, dtype=np.int64)
    seed = a.seed if a.seed is not None else cfg.seed
    return draw_attackers(cfg.strategy.clients, a.fraction, seed)


def attacked_partition(cfg: RunConfig, labels: np.ndarray) -> Partition:
    """The clients' partition (clients.py), with the attacking clients named when an attack
    is on: partition.json records who attacks."""
    parts = client_partition(cfg, labels)
    if not cfg.attack.on:
        return parts
    return dataclasses.replace(parts, attackers=run_attackers(cfg).tolist())


def check_attack(cfg: RunConfig, executor: str) -> None:
    """The attack's rules for a federated run; ValueError names the first one broken."""
    a, clients = cfg.attack, cfg.strategy.clients
    if a.kind == "none":
        return
    if int(round(a.fraction * clients)) < 1:
        raise ValueError(
            f"attack.fraction={a.fraction} makes no attacker among {clients} clients "
            f"(round(fraction * clients) = 0); the smallest fraction is {1 / clients:.4g}"
        )
    if not a.poisons_data:
        return
    if executor not in DATA_EXECUTORS:
        raise ValueError(
            f"attack.kind={a.kind} poisons the clients' training data, but executor "
            f"{executor}'s clients load their own data; data attacks run on executors "
            f"{', '.join(DATA_EXECUTORS)}"
        )
    if a.start != 1:
        raise ValueError(
            f"attack.start={a.start} applies to model attacks; attack.kind={a.kind} poisons "
            "the training data for the whole run (attack.start must be 1)"
        )


def check_attack_data(cfg: RunConfig, data) -> None:
    """A backdoor's target must be one of the dataset's classes."""
    a = cfg.attack
    if a.kind == "backdoor" and a.target >= data.classes:
        raise ValueError(
            f"attack.target={a.target} is not a class of dataset {cfg.dataset} "
            f"(classes 0 to {data.classes - 1})"
        )


def poison_clients(ctx: WorkerContext, clients: ClientData) -> None:
    """Poison the attackers' training samples in this rank's copy of the dataset (a data
    attack); nothing otherwise. Every rank draws the same attackers and samples."""
    a = ctx.cfg.attack
    if not (a.on and a.poisons_data):
        return
    seed = a.seed if a.seed is not None else ctx.cfg.seed
    attackers = run_attackers(ctx.cfg)
    ctx.data = poison(ctx.data, a.kind, clients.train, attackers, a.target, a.poison, seed)


def attack_success(model: torch.nn.Module, ctx: WorkerContext) -> float | None:
    """The backdoor's success rate: the fraction of triggered test images whose true label
    is not the target that the model classifies as the target; None without a backdoor."""
    a = ctx.cfg.attack
    if not (a.on and a.kind == "backdoor"):
        return None
    x, y = ctx.data.x_test, ctx.data.y_test
    keep = y != a.target
    if not bool(keep.any()):
        return None
    x = triggered(x[keep], trigger_value(ctx.data.x_train))
    was_training = model.training
    model.eval()
    hits = 0
    with torch.no_grad():
        for lo in range(0, len(x), EVAL_BATCH):
            hits += int((model(x[lo : lo + EVAL_BATCH]).argmax(dim=1) == a.target).sum())
    model.train(was_training)
    return hits / len(x)


class AttackTransform(RoundTransform):
    """Replaces the attackers' rows of a round with a model attack's, from round `start` on
    (no rows change under a data attack), and records the round's attackers."""

    name = "attack"

    def __init__(
        self, attackers: np.ndarray, settings: AttackSettings | None, start: int, seed: int
    ) -> None:
        self.attackers, self.settings, self.start, self.seed = attackers, settings, start, seed
        self.seen: list[int] = []

    def aggregation(self, inner: Aggregation) -> Aggregation:
        self.seen = []  # a fresh attempt at a round: its clients are drawn again
        return inner

    def updates(self, round_: int, start: torch.Tensor, updates: Updates) -> Updates:
        mask = np.isin(updates.clients, self.attackers)
        acting = self.settings is None or round_ >= self.start
        if acting:
            self.seen += [int(c) for c in updates.clients[mask]]
        if self.settings is None or round_ < self.start or not mask.any():
            return updates
        rows = updates.params
        valid = torch.isfinite(rows).all(dim=1)  # a lost reply's NaN row stays for the screen
        base = start.to(rows.device, rows.dtype)
        attack = torch.from_numpy(mask).to(rows.device)[valid]
        first = int(updates.clients[0])
        gen = torch.Generator().manual_seed(seed_of(self.seed, round_, first))
        out = rows.clone()
        out[valid] = base + craft(rows[valid] - base, attack, self.settings, gen)
        updates.params = out
        return updates

    def fields(self, round_: int) -> dict:
        return {"attackers": sorted(set(self.seen))}


def seed_of(seed: int, round_: int, first: int) -> int:
    """A generator seed per (run seed, round, chunk's first client): a resumed run and every
    executor draw the same noise."""
    return int(np.random.SeedSequence([seed, ATTACK_STREAM, round_, first]).generate_state(1)[0])


def make_attack(setup: ClientSetup) -> AttackTransform | None:
    """The run's attack transform, or None when attack.kind is none; records the attackers
    in the lead's `attack` phase event."""
    cfg = setup.ctx.cfg
    a = cfg.attack
    if not a.on:
        return None
    attackers = run_attackers(cfg)
    per_round = cfg.strategy.clients_per_round or cfg.strategy.clients
    settings = None
    if not a.poisons_data:
        scale = a.scale if a.scale is not None or a.kind != "scaling" else float(per_round)
        settings = AttackSettings(a.kind, scale, a.sigma, a.z, a.epsilon)
    if setup.ctx.is_lead:
        setup.ctx.recorder.phase(
            "attack",
            attack=a.kind,
            attackers=attackers.tolist(),
            fraction=a.fraction,
            start=a.start,
        )
    seed = a.seed if a.seed is not None else cfg.seed
    return AttackTransform(attackers, settings, a.start, seed)
