"""Process executor: the server on rank 0, virtual clients hosted on ranks 1..N.

Each host owns a contiguous block of client ids. Per round the server sends each host that
has sampled clients a header (round, count), the client ids and the global parameters; the
host trains those clients one after another and answers with one (count, P + 2) float32
tensor: each client's parameters, its sample count and its mean loss. A header with a
negative round tells the host to stop. Everything moves as flat tensors through the
Communicator, so it is counted.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from distlab.federated.clients import ClientData, LocalSpec, client_batches, train_client
from distlab.federated.server import Updates
from distlab.runtime.comm import Communicator

SERVER = 0
STOP = -1


def client_hosts(clients: int, hosts: int) -> np.ndarray:
    """The rank (1..hosts) that hosts each client: contiguous blocks of near-equal size."""
    owner = np.empty(clients, dtype=np.int64)
    for h, block in enumerate(np.array_split(np.arange(clients), hosts)):
        owner[block] = h + 1
    return owner


class ProcessExecutor:
    """Server side: ships sampled clients' work to their hosts and collects the results."""

    def __init__(self, comm: Communicator, owner: np.ndarray, size: int) -> None:
        self.comm, self.owner, self.size = comm, owner, size

    def train(self, round_: int, start: torch.Tensor, clients: np.ndarray) -> Updates:
        hosts = [h for h in np.unique(self.owner[clients])]
        for h in hosts:
            ids = clients[self.owner[clients] == h]
            self.comm.send(torch.tensor([round_, len(ids)], dtype=torch.int64), int(h))
            self.comm.send(torch.from_numpy(ids.astype(np.int64)), int(h))
            self.comm.send(start, int(h))
        rows = []
        for h in hosts:
            buf = torch.empty(int((self.owner[clients] == h).sum()), self.size + 2)
            self.comm.recv(buf, int(h))
            rows.append(buf)
        out = torch.cat(rows) if rows else torch.empty(0, self.size + 2)
        order = np.concatenate([clients[self.owner[clients] == h] for h in hosts] or [clients])
        return Updates(
            order,
            out[:, : self.size],
            out[:, self.size].round().numpy().astype(np.int64),
            out[:, self.size + 1].numpy().astype(np.float64),
        )

    def close(self) -> None:
        for h in np.unique(self.owner):
            self.comm.send(torch.tensor([STOP, 0], dtype=torch.int64), int(h))


def host_clients(
    comm: Communicator,
    model: nn.Module,
    data: ClientData,
    spec: LocalSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
) -> int:
    """Client-host side: train whatever the server asks for until it says stop; returns the
    number of client trainings done."""
    size = sum(p.numel() for p in model.parameters())
    header = torch.empty(2, dtype=torch.int64)
    done = 0
    while True:
        comm.recv(header, SERVER)
        round_, count = int(header[0]), int(header[1])
        if round_ == STOP:
            return done
        ids = torch.empty(count, dtype=torch.int64)
        comm.recv(ids, SERVER)
        start = torch.empty(size)
        comm.recv(start, SERVER)
        out = torch.empty(count, size + 2)
        for i, client in enumerate(ids.tolist()):
            batches = client_batches(
                data.train[client], spec.batch, spec.epochs, seed, round_, client
            )
            out[i, :size], losses = train_client(model, start, x, y, batches, spec)
            out[i, size] = len(data.train[client])
            out[i, size + 1] = float(np.mean(losses)) if losses else float("nan")
        comm.send(out, SERVER)
        done += count
