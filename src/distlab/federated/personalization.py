"""Personalization: the model a worker or client is tested with on its own held-out split.

A decentralized or federated run trains one shared model; a participant with skewed data is
better served by a model of its own. Four ways, each a choice of the strategy's params:

- Ditto (Li, Hu, Beirami and Smith 2021, "Ditto: Fair and Robust Federated Learning Through
  Personalization", Algorithm 1): a second model v that never leaves the participant; on
  every batch it takes a step on its own loss + lambda/2 ||v - w||^2, w the shared model.
  It doubles the gradient computations per batch, not the data passes.
- A label prior (Bayes' rule for a change of class priors, Saerens, Latinne and
  Decaestecker 2002): the shared model's logits shifted by log(p_i / p_mean), the
  participant's label frequencies against their mean; no extra training, one counted
  allreduce of the frequencies at the start.
- A personal head (FedPer, Arivazhagan et al. 2019): the last layer is never shared;
  `head_size` says how many trailing parameters stay home.
- Fine-tuning: a copy of the model after S local steps on the participant's own training
  split, from its own batch stream (round 0 of `client_batches`: `finetune_schedule`),
  trained as a federated client trains (`train_client`). FedAvg's `personalized_accuracy`
  fine-tunes every client of a chunk at once on the vectorized trainer, from the same
  batches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from distlab.federated.clients import (
    ClientData,
    LocalSpec,
    client_batches,
    local_steps,
    train_client,
)
from distlab.federated.evaluation import local_accuracy
from distlab.federated.vectorized import CHUNK, VectorTrainer
from distlab.training import compute_gradients, flat_params, make_optimizer

if TYPE_CHECKING:
    from distlab.runtime.context import WorkerContext


class DittoModel:
    """Ditto's personal model v of one worker (Li et al. 2021, Algorithm 1): on each batch,
    v <- v - lr (grad F_k(v) + lambda (v - w)), with w the shared model. v starts from the
    same initial weights as w, uses the run's optimizer, and is never sent."""

    def __init__(self, ctx: WorkerContext, weight: float):
        self.model = ctx.build_model()
        self.opt = make_optimizer(self.model.parameters(), ctx.cfg.optimizer)
        self.weight = weight

    def step(self, x: torch.Tensor, y: torch.Tensor, shared: nn.Module) -> None:
        compute_gradients(self.model, x, y)
        with torch.no_grad():
            for own, theirs in zip(self.model.parameters(), shared.parameters(), strict=True):
                own.grad.add_(own - theirs, alpha=self.weight)  # d/dv of lambda/2 ||v - w||^2
        self.opt.step()

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])


class Shifted(nn.Module):
    """A model whose logits are moved by a fixed per-class vector (a personal prior)."""

    def __init__(self, model: nn.Module, shift: torch.Tensor):
        super().__init__()
        self.model, self.shift = model, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + self.shift


def label_shift(ctx: WorkerContext, train: np.ndarray) -> torch.Tensor:
    """log(p_i / p_mean) per class: this worker's add-one smoothed training-label frequencies
    (of the samples `train`) against their mean over the workers. Every worker walks its own
    part one batch per step, so with doubly stochastic mixing the shared model fits the mean
    of the workers' losses, whose class prior is p_mean; the worker's own test split has
    prior p_i."""
    labels = ctx.data.y_train[torch.from_numpy(train)]
    counts = torch.bincount(labels, minlength=ctx.data.classes).double() + 1.0
    own = counts / counts.sum()
    mean = own.clone()
    ctx.comm.all_reduce(mean)
    # Every start (a resumed run's too) sends it: the summary's formula counts these events.
    ctx.recorder.phase("label_prior", classes=ctx.data.classes)
    return (own.log() - (mean / ctx.world).log()).float()


def head_size(model: nn.Module) -> int:
    """Parameters of the last layer that has any: the tail of the flat parameter vector."""
    layers = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    head = list(layers[-1].parameters(recurse=False))
    if [id(p) for p in head] != [id(p) for p in list(model.parameters())[-len(head) :]]:
        raise ValueError("strategy.personal_head needs a model whose last layer comes last")
    return sum(p.numel() for p in head)


def finetune_copy(
    scratch: nn.Module,
    start: nn.Module,
    train: np.ndarray,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: LocalSpec,
    steps: int,
    seed: int,
    client: int,
) -> nn.Module:
    """`scratch` after `steps` local steps from `start`'s weights on the client's training
    samples `train`: the fine-tuning schedule and the local training of a federated client,
    one client at a time."""
    batches = finetune_schedule(train, spec.batch, steps, seed, client)
    train_client(scratch, flat_params(start).clone(), x, y, batches, spec)
    return scratch


class Personal:
    """One worker's personalization: its Ditto model, label shift or fine-tuning copy, and
    the test of its personal model on its own held-out split. `ditto` is Ditto's lambda
    (None: no Ditto model); a label prior is one counted allreduce, made here."""

    def __init__(
        self, ctx: WorkerContext, data: ClientData, ditto: float | None, prior: bool, steps: int
    ):
        self.ctx, self.data, self.steps = ctx, data, steps
        self.ditto = DittoModel(ctx, ditto) if ditto is not None else None
        self.shift = label_shift(ctx, data.train[ctx.rank]) if prior else None
        self.scratch: nn.Module | None = None  # the fine-tuning copy, built on use

    def step(self, x: torch.Tensor, y: torch.Tensor, shared: nn.Module) -> None:
        """Ditto's step on this batch, toward the shared model as it is before its own."""
        if self.ditto is not None:
            self.ditto.step(x, y, shared)

    def model(self, shared: nn.Module) -> nn.Module:
        """The personal model: the shared one (or Ditto's v), shifted by the label prior, or
        a copy after `steps` fine-tuning steps on the worker's own training split."""
        cfg, rank = self.ctx.cfg, self.ctx.rank
        own = shared if self.ditto is None else self.ditto.model
        if self.shift is not None:
            return Shifted(own, self.shift)
        if not self.steps:
            return own
        if self.scratch is None:
            self.scratch = self.ctx.build_model()
        spec = LocalSpec(cfg.optimizer, cfg.batch_size, 1)
        x, y = self.ctx.data.x_train, self.ctx.data.y_train
        train = self.data.train[rank]
        return finetune_copy(self.scratch, own, train, x, y, spec, self.steps, cfg.seed, rank)

    def accuracies(self, shared: nn.Module) -> dict:
        """Collective: every worker's personal accuracy on its own held-out split, gathered
        to the lead as their mean, worst and list ({} elsewhere)."""
        rank = self.ctx.rank
        mine = ClientData([self.data.train[rank]], [self.data.test[rank]])
        x, y = self.ctx.data.x_train, self.ctx.data.y_train
        acc = float(local_accuracy(self.model(shared), mine, x, y)[0])
        everyone = self.ctx.comm.gather(torch.tensor([acc], dtype=torch.float64), self.ctx.lead)
        if everyone is None:
            return {}
        accs = [float(a[0]) for a in everyone]
        return {
            "local_accuracy_mean": float(np.mean(accs)),
            "local_accuracy_worst": min(accs),
            "local_accuracies": accs,
        }

    def state_dict(self) -> dict | None:
        """Ditto's model and optimizer (None without Ditto: the rest is computed again)."""
        return self.ditto.state_dict() if self.ditto is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.ditto is not None:
            self.ditto.load_state_dict(state)


def check_personal(p, own_labels: dict[str, bool]) -> None:
    """The rules of a strategy's personal keys (personalized, personal, ditto_lambda,
    label_prior, personal_head, finetune). `own_labels` names the strategy's settings that
    are on, under which its shared model already trains on each worker's own labels."""
    for key in ("finetune", "personal_head", "label_prior"):
        if getattr(p, key) and not p.personalized:
            raise ValueError(f"strategy.{key} applies to personalized runs; set personalized=true")
    if p.personal != "mixed" and not p.personalized:
        raise ValueError(
            f"strategy.personal {p.personal} applies to personalized runs; set personalized=true"
        )
    # Compared with the default: a config read back from config.json sets every key.
    if p.personal != "ditto" and p.ditto_lambda != type(p).model_fields["ditto_lambda"].default:
        raise ValueError(
            f"strategy.ditto_lambda applies to personal ditto only (personal is {p.personal!r})"
        )
    # A model trained on the worker's own labels already carries its prior: no second shift.
    trained = {
        "personal ditto": p.personal == "ditto",
        "personal_head": p.personal_head,
        "finetune": bool(p.finetune),
        **own_labels,
    }
    clash = [name for name, on in trained.items() if on]
    if p.label_prior and clash:
        raise ValueError(
            f"strategy.label_prior shifts a model trained on every worker's data; drop "
            f"{clash[0]} (a model trained on the worker's own labels already has its prior)"
        )


def finetune_schedule(train: np.ndarray, batch: int | None, steps: int, seed: int, client: int):
    """The first `steps` local batches of a client, drawn from their own stream (round 0)."""
    epochs = -(-steps // max(local_steps(len(train), batch, 1), 1))
    return client_batches(train, batch, epochs, seed, 0, client)[:steps]


def personalized_accuracy(
    trainer: VectorTrainer, start: torch.Tensor, data: ClientData, steps: int, seed: int
) -> np.ndarray:
    """Per client, accuracy on its held-out samples after `steps` local steps from `start`
    (NaN for a client without held-out samples)."""
    ids = [c for c, t in enumerate(data.test) if len(t) and len(data.train[c])]
    acc = np.full(len(data.test), np.nan)
    batch = trainer.spec.batch
    for lo in range(0, len(ids), CHUNK):
        chunk = ids[lo : lo + CHUNK]
        schedules = [finetune_schedule(data.train[c], batch, steps, seed, c) for c in chunk]
        params, _ = trainer.train(start, schedules)
        tests = [data.test[c] for c in chunk]
        acc[chunk] = trainer.count_correct(params, tests) / np.array([len(t) for t in tests])
    return acc
