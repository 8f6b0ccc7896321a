"""Process executor: the server on rank 0, virtual clients hosted on ranks 1..N.

Each host owns a contiguous block of client ids. Per round the server sends each host that
has sampled clients a header (round, count), the client ids and the global parameters; the
host trains those clients one after another (a SequentialExecutor) and answers with one
(count, P + 2) float32 tensor: each client's parameters, its sample count and its mean loss.
A header with a negative round tells the host to stop. Everything moves as flat tensors
through the Communicator, so it is counted. With compression (compression.py) the global
parameters go down dense, or as the downlink payloads the host has not had yet, and each
host answers with the (count, 2) sample counts and losses, then its clients' (count, bytes)
uint8 payloads of their deltas: the server's measured bytes are the compressed bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from distlab.federated.compression import HostLink, ServerLink, host_link, server_link
from distlab.federated.sequential import SequentialExecutor, start_sequential
from distlab.federated.types import Layout, Updates
from distlab.runtime.comm import Communicator

if TYPE_CHECKING:
    from distlab.config import RunConfig
    from distlab.federated.executors import ClientSetup

SERVER = 0
STOP = -1
CHECKPOINT = -2


def client_hosts(clients: int, hosts: int) -> np.ndarray:
    """The rank (1..hosts) that hosts each client: contiguous blocks of near-equal size."""
    owner = np.empty(clients, dtype=np.int64)
    for h, block in enumerate(np.array_split(np.arange(clients), hosts)):
        owner[block] = h + 1
    return owner


class ProcessExecutor:
    """Server side: ships sampled clients' work to their hosts and collects the results."""

    def __init__(
        self, comm: Communicator, owner: np.ndarray, layout: Layout, link: ServerLink | None = None
    ) -> None:
        self.comm, self.owner, self.layout = comm, owner, layout
        self.size = layout.size
        self.link = link

    def train(self, round_: int, start: torch.Tensor, clients: np.ndarray) -> Updates:
        if self.link is not None:
            return self.train_linked(round_, start, clients)
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
            {"loss": out[:, self.size + 1].numpy().astype(np.float64)},
            self.layout,
        )

    def train_linked(self, round_: int, start: torch.Tensor, clients: np.ndarray) -> Updates:
        """A round's chunk on the compressed wire (the module doc)."""
        link, hosts = self.link, np.unique(self.owner[clients])
        link.begin(round_, start)
        blocks = [clients[self.owner[clients] == h] for h in hosts]
        for h, ids in zip(hosts, blocks, strict=True):
            self.comm.send(torch.tensor([round_, len(ids)], dtype=torch.int64), int(h))
            self.comm.send(torch.from_numpy(ids.astype(np.int64)), int(h))
            link.send_model(self.comm, int(h), round_)
        got = [
            link.recv_rows(self.comm, int(h), len(ids))
            for h, ids in zip(hosts, blocks, strict=True)
        ]
        rows = torch.cat([r for r, _ in got]) if got else torch.empty(0, self.size)
        figures = torch.cat([f for _, f in got]) if got else torch.empty(0, 2)
        return Updates(
            np.concatenate(blocks) if blocks else clients,
            rows,
            figures[:, 0].round().numpy().astype(np.int64),
            {"loss": figures[:, 1].numpy().astype(np.float64)},
            self.layout,
        )

    def state_dict(self) -> dict | None:
        """The compression state a checkpoint keeps (None without compression)."""
        return None if self.link is None else self.link.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.link.load_state_dict(state)

    def close(self) -> None:
        for h in np.unique(self.owner):
            self.comm.send(torch.tensor([STOP, 0], dtype=torch.int64), int(h))

    def checkpoint(self, round_: int) -> None:
        """Have every host write its checkpoint of `round_` (its counters and recorder): a
        checkpoint is complete only with every rank's file."""
        for h in np.unique(self.owner):
            self.comm.send(torch.tensor([CHECKPOINT, round_], dtype=torch.int64), int(h))


def host_clients(
    comm: Communicator, local: SequentialExecutor, on_checkpoint=None, link: HostLink | None = None
) -> int:
    """Client-host side: train whatever the server asks for until it says stop; returns the
    number of client trainings done. `on_checkpoint(round)` writes this host's checkpoint
    when the server asks for one; `link` carries a compressed run's wire."""
    size = local.layout.size
    header = torch.empty(2, dtype=torch.int64)
    done = 0
    while True:
        comm.recv(header, SERVER)
        round_, count = int(header[0]), int(header[1])
        if round_ == STOP:
            return done
        if round_ == CHECKPOINT:
            if on_checkpoint is not None:
                on_checkpoint(count)
            continue
        ids = torch.empty(count, dtype=torch.int64)
        comm.recv(ids, SERVER)
        if link is not None:
            start = link.recv_model(comm)
            link.send_rows(comm, local.train(round_, start, ids.numpy()), start)
            done += count
            continue
        start = torch.empty(size)
        comm.recv(start, SERVER)
        updates = local.train(round_, start, ids.numpy())
        out = torch.empty(count, size + 2)
        out[:, :size] = updates.params
        out[:, size] = torch.from_numpy(updates.num_examples)
        out[:, size + 1] = torch.from_numpy(updates.losses)
        comm.send(out, SERVER)
        done += count


# --- the executor table's entry (executors.py) -------------------------------------------------


def check_hosts(cfg: RunConfig) -> None:
    """Each host needs a client."""
    clients = cfg.strategy.clients
    if cfg.workers > clients:
        raise ValueError(
            f"--workers ({cfg.workers}) must be <= clients ({clients}): each host needs a client"
        )


def start_processes(setup: ClientSetup) -> ProcessExecutor:
    owner = client_hosts(setup.ctx.cfg.strategy.clients, setup.ctx.world - 1)
    link = server_link(setup, np.unique(owner))
    return ProcessExecutor(setup.ctx.comm, owner, Layout.of(setup.model), link)


def host_processes(setup: ClientSetup) -> int:
    """A client host's life: train what the server sends until it says stop."""
    ctx, link = setup.ctx, host_link(setup)
    # a host keeps no state between rounds but its counters, its recorder and compression's
    state = ctx.restore({})
    if state is not None and link is not None:
        link.load_state_dict(state["extra"]["link"])

    def on_checkpoint(round_: int) -> None:
        extra = None if link is None else {"link": link.state_dict()}
        ctx.save_checkpoint(round_, "round", {}, {"round": round_}, extra)

    return host_clients(ctx.comm, start_sequential(setup), on_checkpoint, link)
