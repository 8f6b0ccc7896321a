"""Sequential executor: the sampled clients train one after another in this process, each with
the model's own layers and a fresh torch.optim optimizer.

This is what every client host of the process executor runs for the clients it is sent
(processes.py calls it), so with the hosts' thread count it reproduces a process run bit for
bit in one process: the reference the vectorized executor is checked against.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from distlab.federated.clients import ClientData, LocalSpec, client_batches, train_client
from distlab.federated.private_local import noise_generator
from distlab.federated.types import Layout, Updates

if TYPE_CHECKING:
    from distlab.federated.executors import ClientSetup


class SequentialExecutor:
    """Trains clients one at a time on one model; a client is its partition indices."""

    def __init__(
        self,
        model: nn.Module,
        data: ClientData,
        spec: LocalSpec,
        x: torch.Tensor,
        y: torch.Tensor,
        seed: int,
    ) -> None:
        self.model, self.data, self.spec = model, data, spec
        self.x, self.y, self.seed = x, y, seed
        self.layout = Layout.of(model)

    def train(self, round_: int, start: torch.Tensor, clients: np.ndarray) -> Updates:
        rows = torch.empty(len(clients), start.numel())
        losses = np.full(len(clients), np.nan)
        spec = self.spec
        for i, client in enumerate(clients.tolist()):
            own = self.data.train[client]
            batches = client_batches(own, spec.batch, spec.epochs, self.seed, round_, client)
            noise = None if spec.dp is None else noise_generator(self.seed, round_, client)
            rows[i], steps = train_client(self.model, start, self.x, self.y, batches, spec, noise)
            losses[i] = np.mean(steps) if steps else np.nan
        sizes = self.data.sizes[clients]
        return Updates(clients, rows, sizes, {"loss": losses}, self.layout)

    def close(self) -> None:
        pass


def start_sequential(setup: ClientSetup) -> SequentialExecutor:
    """The executor table's entry (executors.py), and what each process host runs."""
    x, y = setup.ctx.data.x_train, setup.ctx.data.y_train
    return SequentialExecutor(setup.model, setup.data, setup.spec, x, y, setup.ctx.cfg.seed)
