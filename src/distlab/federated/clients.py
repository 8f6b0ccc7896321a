"""Virtual clients: their data split, their batch schedule and sequential local training.

A client is only its partition indices between rounds; a model exists for it while it trains.
Every executor, and a deployed client (deploy/clientapp.py), draws a client's batches from
`client_batches` and reads its data and local training from the run's config here
(`client_partition`, `client_data`, `local_spec`), so they train on the same data in the same
order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from distlab.data.partition import partition
from distlab.federated.private_local import LocalPrivacy, local_privacy, private_step
from distlab.training import compute_gradients, flat_params, make_optimizer, set_flat_params

if TYPE_CHECKING:
    from distlab.config import RunConfig
    from distlab.data.partition import Partition
    from distlab.runtime.context import WorkerContext

# Stream tags that keep the generators of different purposes apart under one run seed.
BATCH_STREAM = 1
HOLDOUT_STREAM = 2


@dataclass(frozen=True)
class ClientData:
    """Per client, the sample indices it trains on and those it holds out for local tests."""

    train: list[np.ndarray]
    test: list[np.ndarray]

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(t) for t in self.train], dtype=np.int64)


def split_clients(parts: list[np.ndarray], test_fraction: float, seed: int) -> ClientData:
    """Hold out floor(test_fraction * n) random samples of each client's part for local tests."""
    train, test = [], []
    for client, idx in enumerate(parts):
        held = int(test_fraction * len(idx))
        if held == 0:
            train.append(idx)
            test.append(idx[:0])
            continue
        order = np.random.default_rng([seed, HOLDOUT_STREAM, client]).permutation(idx)
        train.append(np.sort(order[held:]))
        test.append(np.sort(order[:held]))
    return ClientData(train, test)


def client_partition(cfg: RunConfig, labels: np.ndarray) -> Partition:
    """The clients' partition (before local test splits), for partition.json. Every rank and
    every deployed client computes it from the seed: no messages."""
    return partition(labels, cfg.strategy.clients, cfg.partition, cfg.seed)


def client_data(ctx: WorkerContext, params) -> ClientData:
    """Every client's train and held-out indices; `params` is the run's federated strategy
    parameters (its local_test_fraction)."""
    parts = ctx.partition  # computed once by the launching process, where it could
    if parts is None:
        parts = client_partition(ctx.cfg, ctx.labels())
    return split_clients(parts.indices, params.local_test_fraction, ctx.cfg.seed)


def local_steps(size: int, batch: int | None, epochs: int) -> int:
    """Optimizer steps one client takes in a round; batch None = the whole local set."""
    per_epoch = 1 if batch is None else -(-size // batch)
    return epochs * per_epoch if size else 0


def client_batches(
    indices: np.ndarray, batch: int | None, epochs: int, seed: int, round_: int, client: int
) -> list[np.ndarray]:
    """The sample indices of each local step of `client` in `round_`: every epoch a fresh
    permutation cut into batches (the last one may be smaller); batch None = full batch."""
    rng = np.random.default_rng([seed, BATCH_STREAM, round_, client])
    size = len(indices)
    step = size if batch is None else batch
    out = []
    for _ in range(epochs):
        order = indices[rng.permutation(size)]
        out.extend(order[i : i + step] for i in range(0, size, step))
    return out


@dataclass
class LocalSpec:
    """How clients train locally: optimizer, batch, epochs, FedProx's mu and DP-SGD's
    clipping and noise (federated/private_local.py; None = plain gradients)."""

    optimizer: object
    batch: int | None
    epochs: int
    mu: float = 0.0
    dp: LocalPrivacy | None = None


def local_spec(cfg: RunConfig) -> LocalSpec:
    """How a client of a federated run trains: FedSGD takes one full-batch step, FedProx adds
    its mu, the others train local_epochs of local_batch (or the run's batch_size)."""
    p = cfg.strategy
    if p.algorithm == "fedsgd" or p.local_batch == "full":
        batch = None
    else:
        batch = p.local_batch or cfg.batch_size
    mu = p.mu if p.algorithm == "fedprox" else 0.0
    return LocalSpec(cfg.optimizer, batch, p.local_epochs, mu, local_privacy(cfg))


def train_client(
    model: nn.Module,
    start: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: list[np.ndarray],
    spec: LocalSpec,
    noise: torch.Generator | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Local training from the global parameters `start` with a fresh optimizer; FedProx adds
    mu * (w - w_global) to every gradient (Li et al. 2020, "Federated Optimization in
    Heterogeneous Networks"); with spec.dp each gradient is DP-SGD's, its noise drawn from
    `noise` (private_local.noise_generator). Returns the new flat parameters and the
    per-step losses."""
    set_flat_params(model, start.clone())  # the model's parameters become views of this copy
    model.train()
    opt = make_optimizer(model.parameters(), spec.optimizer)
    anchor = [p.detach().clone() for p in model.parameters()] if spec.mu else []
    losses = []
    for idx in batches:
        index = torch.from_numpy(idx)
        if spec.dp is None:
            losses.append(compute_gradients(model, x[index], y[index]))
        else:
            losses.append(private_step(model, spec.dp, x[index], y[index], noise))
        for p, a in zip(model.parameters() if spec.mu else [], anchor, strict=False):
            p.grad.add_(p.detach() - a, alpha=spec.mu)
        opt.step()
    return flat_params(model).clone(), losses
