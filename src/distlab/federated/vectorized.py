"""Vectorized executor: every sampled client of a round trains at once in one process.

The clients' parameters are one (clients, P) tensor. Each local step gathers one padded
batch per client; torch.func.vmap of functional_call gives every client's loss in one call,
and one backward pass gives every client's gradient. SGD (momentum, weight decay), Adam and
FedProx's proximal term are applied as tensor arithmetic on the stacked state. Clients whose
local steps are done (fewer samples) or whose batch is short are handled by masks: a padded
sample has weight 0, and a finished client's parameters and optimizer state are left
unchanged, so nothing is truncated.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from distlab.federated.clients import LocalSpec, client_batches
from distlab.federated.server import Updates

# Clients trained together; bounds the stacked state (chunk x P x a few copies).
CHUNK = 128


class VectorTrainer:
    """Trains many clients of one model from the same start, with a functional optimizer."""

    def __init__(self, model: nn.Module, spec: LocalSpec, x: torch.Tensor, y: torch.Tensor):
        if spec.optimizer.name not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be sgd or adam (got {spec.optimizer.name!r})")
        self.model, self.spec, self.x, self.y = model, spec, x, y
        self.names = [n for n, _ in model.named_parameters()]
        self.shapes = [p.shape for _, p in model.named_parameters()]
        self.sizes = [p.numel() for _, p in model.named_parameters()]
        self.client_losses = vmap(self.batch_loss, randomness="different")

    def step_grad(self, params: torch.Tensor, x, y, w) -> tuple[torch.Tensor, torch.Tensor]:
        """Every client's gradient and loss for one step. The clients' losses are independent,
        so the gradient of their sum with respect to the stacked parameters holds each
        client's own gradient in its row: one backward pass for all of them. (Plain autograd
        here rather than torch.func.grad, which would import torch._dynamo: 2 s of start-up.)"""
        leaf = params.detach().requires_grad_()
        losses = self.client_losses(leaf, x, y, w)
        (grads,) = torch.autograd.grad(losses.sum(), leaf)
        return grads, losses.detach()

    def batch_loss(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor):
        """One client's weighted batch loss: sum of w * CE, with w = 1/len or 0 (padding)."""
        logits = functional_call(self.model, self.unflatten(flat), (x,))
        # log_softmax + gather is cross_entropy; under vmap, cross_entropy goes through a
        # decomposition that imports sympy (about a second of start-up).
        picked = torch.log_softmax(logits, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        return -(picked * w).sum()

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        views = torch.split(flat, self.sizes)
        return {n: v.view(s) for n, v, s in zip(self.names, views, self.shapes, strict=True)}

    @torch.no_grad()
    def count_correct(self, params: torch.Tensor, tests: list[np.ndarray]) -> np.ndarray:
        """Per client, how many of its own test samples its own parameters classify right."""
        index, weight = pad_schedules([[t] for t in tests])
        x, y, real = self.x[index[0]], self.y[index[0]], torch.from_numpy(weight[0] > 0)
        logits = vmap(lambda f, xb: functional_call(self.model, self.unflatten(f), (xb,)))(
            params, x
        )
        return ((logits.argmax(-1) == y) & real).sum(1).numpy()

    def train(
        self, start: torch.Tensor, schedules: list[list[np.ndarray]]
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Each schedule is one client's list of batch indices; returns (clients, P) final
        parameters and each client's mean step loss (NaN for a client with no steps)."""
        self.model.train()
        params, losses = [], []
        for lo in range(0, len(schedules), CHUNK):
            p, loss = self.train_chunk(start, schedules[lo : lo + CHUNK])
            params.append(p)
            losses.append(loss)
        if not params:
            return start.new_zeros(0, start.numel()), np.zeros(0)
        return torch.cat(params), np.concatenate(losses)

    def train_chunk(self, start: torch.Tensor, schedules: list[list[np.ndarray]]):
        index, weight = pad_schedules(schedules)
        xs, ys, ws = self.x[index], self.y[index], torch.from_numpy(weight)
        active = torch.from_numpy((weight.sum(axis=2) > 0).astype(np.float32))
        params = start.expand(len(schedules), -1).clone()
        state: dict[str, torch.Tensor] = {}
        loss_sum = torch.zeros(len(schedules))
        for t in range(index.shape[0]):
            grads, loss = self.step_grad(params, xs[t], ys[t], ws[t])
            self.apply_update(params, grads, start, state, active[t].unsqueeze(1), t + 1)
            loss_sum += loss.detach() * active[t]
        steps = active.sum(0)
        mean_loss = (loss_sum / steps.clamp(min=1)).numpy()
        return params, np.where(steps.numpy() > 0, mean_loss, np.nan)

    def apply_update(self, params, grads, start, state, active, t: int) -> None:
        """One masked optimizer step on the stacked parameters, in place."""
        opt, mu = self.spec.optimizer, self.spec.mu
        if mu:
            grads = grads + mu * (params - start)
        if opt.weight_decay:
            grads = grads + opt.weight_decay * params
        if opt.name == "adam":
            step = adam_direction(grads, state, active, t)
        else:
            step = sgd_direction(grads, state, active, opt.momentum)
        params.sub_(step * (active * opt.lr))


def sgd_direction(grads, state: dict, active, momentum: float) -> torch.Tensor:
    """torch.optim.SGD without dampening: buf = momentum * buf + g (buf starts at g)."""
    if not momentum:
        return grads
    buf = state.get("buf")
    new = grads if buf is None else momentum * buf + grads
    state["buf"] = new if buf is None else torch.where(active > 0, new, buf)
    return state["buf"]


def adam_direction(grads, state: dict, active, t: int, betas=(0.9, 0.999), eps=1e-8):
    """torch.optim.Adam's step direction divided by lr (Kingma and Ba 2015). Every client
    still active at step t has taken exactly t steps, so one bias correction serves all."""
    b1, b2 = betas
    m = state.get("m", torch.zeros_like(grads))
    v = state.get("v", torch.zeros_like(grads))
    keep = active > 0
    state["m"] = torch.where(keep, m.lerp(grads, 1 - b1), m)
    state["v"] = torch.where(keep, v * b2 + (1 - b2) * grads * grads, v)
    denom = state["v"].sqrt() / math.sqrt(1 - b2**t) + eps
    return state["m"] / denom / (1 - b1**t)


def pad_schedules(schedules: list[list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, clients, batch) sample indices and weights 1/len (0 where padded)."""
    steps = max((len(s) for s in schedules), default=0)
    batch = max((len(b) for s in schedules for b in s), default=1)
    index = np.zeros((steps, len(schedules), batch), dtype=np.int64)
    weight = np.zeros((steps, len(schedules), batch), dtype=np.float32)
    for i, schedule in enumerate(schedules):
        for t, idx in enumerate(schedule):
            if len(idx):
                index[t, i, : len(idx)] = idx
                index[t, i, len(idx) :] = idx[0]
                weight[t, i, : len(idx)] = 1.0 / len(idx)
    return index, weight


class VectorExecutor:
    """In-process executor: a round's sampled clients train together on a VectorTrainer."""

    def __init__(self, trainer: VectorTrainer, data, seed: int) -> None:
        self.trainer, self.data, self.seed = trainer, data, seed
        self.sizes = data.sizes

    def train(self, round_: int, start: torch.Tensor, clients: np.ndarray):
        spec = self.trainer.spec
        schedules = [
            client_batches(self.data.train[c], spec.batch, spec.epochs, self.seed, round_, c)
            for c in clients
        ]
        params, losses = self.trainer.train(start, schedules)
        return Updates(clients, params, self.sizes[clients], losses)

    def close(self) -> None:
        pass
