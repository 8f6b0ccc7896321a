"""Compressed federated updates: the uplink and the downlink of fedavg's executors.

Each sampled client's update is its model delta, trained - start. It passes through the
run's chain (transforms/chain.py) with the client id as its sender, so error feedback
memory is kept per client across rounds (Stich et al. 2018, "Sparsified SGD with Memory").
The server decodes the delta, adds it to its global model and aggregates the rows as it
does uncompressed ones; the chain's own step on the aggregated delta follows (signSGD's
majority vote, Bernstein et al. 2018). A row that is not finite skips compression and stays
NaN, so the server rejects that client as it would without compression.

With compress.downlink the server sends the compressed difference between its global
model and the copy the clients hold. Every client starts a round from the same model, so
one copy serves them all; clients start from the decoded copy. The difference from the held
copy is the server's error feedback (sender 0): it is this round's change plus all that
earlier payloads dropped, which is what a memory on the change since the last round would
add, so the downlink chain keeps no memory of its own (one would count the rest twice).

In one process (vectorized, sequential) nothing travels: `CompressedExecutor` applies the
chains' round trips, batched over a round's clients. The processes executor sends the
payloads (`ServerLink` on the server, `HostLink` on a host): a host that had no client in
some rounds gets every payload it missed, so its copy stays the server's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from distlab.transforms.base import Compressor
from distlab.transforms.chain import Chain, make_chain

if TYPE_CHECKING:
    from distlab.config import RunConfig
    from distlab.federated.executors import ClientSetup
    from distlab.federated.types import Executor, Updates
    from distlab.runtime.comm import Communicator

# The downlink chain's random stream: apart from every rank's uplink stream.
DOWN_STREAM = 1_000_003
DOWN_SENDER = np.zeros(1, dtype=np.int64)

# Compressors fedavg cannot carry, and why (refused before any process starts).
REFUSED = {
    "powersgd": "its low-rank factors keep a warm start per sender that is only valid when "
    "the same sender compresses every step, and fedavg samples clients",
}
# Executors whose clients send raw arrays, and why compression cannot ride on them.
RAW_EXECUTORS = {
    "serial": "the board firmware sends raw float32 weights",
    "flower": "the ClientApp replies with named float arrays (Flower's ArrayRecord)",
}


def check_compression(cfg: RunConfig, executor: str) -> None:
    """One line naming a compressor or an executor that cannot carry the run's compression."""
    names = cfg.compress.names
    if not names:
        return
    for name in names:
        if name in REFUSED:
            raise ValueError(f"compress.kind={name} is not carried by fedavg: {REFUSED[name]}")
    if executor in RAW_EXECUTORS:
        raise ValueError(
            f"compress.kind={names[0]} is not carried by executor {executor}: "
            f"{RAW_EXECUTORS[executor]}; use the vectorized, sequential or processes executor"
        )


def finite(rows: torch.Tensor) -> torch.Tensor:
    """Per row, whether every value is finite (amax propagates NaN and keeps inf)."""
    if rows.shape[1] == 0:
        return torch.ones(len(rows), dtype=torch.bool)
    return torch.isfinite(rows.abs().amax(dim=1))


def steps_aggregate(chain: Chain | None) -> bool:
    """Whether the chain's aggregate changes the mean (signSGD's majority vote)."""
    return chain is not None and type(chain.head).aggregate is not Compressor.aggregate


@dataclass
class Downlink:
    """The server's side of the downlink: its chain and the model copy the clients hold."""

    chain: Chain
    held: torch.Tensor | None = None
    round: int = 0
    sent: dict[int, torch.Tensor] = field(default_factory=dict)
    """Round -> the payload sent that round, kept until every host has it."""

    def advance(self, round_: int, current: torch.Tensor) -> None:
        """Once a round: send the compressed current - held and update the held copy
        (clients hold the initial model before round 1)."""
        if round_ == self.round:
            return
        if self.held is None:
            self.held = current.clone()
        payload = self.chain.encode((current - self.held).unsqueeze(0), DOWN_SENDER)
        self.held = self.held + self.chain.decode(payload)[0]
        self.round, self.sent[round_] = round_, payload

    def state_dict(self) -> dict:
        return {"chain": self.chain.state_dict(), "held": self.held, "round": self.round,
                "sent": dict(self.sent)}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.chain.load_state_dict(state["chain"])
        self.held, self.round, self.sent = state["held"], state["round"], dict(state["sent"])


def make_downlink(cfg: RunConfig, model) -> Downlink | None:
    """The server's downlink when compress.downlink is on, else None."""
    if not (cfg.compress.names and cfg.compress.downlink):
        return None
    return Downlink(down_chain(cfg, model))


def down_chain(cfg: RunConfig, model) -> Chain:
    """The downlink's chain: the held copy is its memory (the module doc)."""
    shapes = [tuple(p.shape) for p in model.parameters()]
    plain = cfg.compress.model_copy(update={"error_feedback": False})
    return make_chain(plain, shapes, cfg.seed, DOWN_STREAM)


def decoded_rows(chain: Chain, rows: torch.Tensor, clients: np.ndarray) -> torch.Tensor:
    """The chain's round trip of the finite rows, one batched call; other rows stay NaN."""
    ok = finite(rows)
    if bool(ok.all()):
        return chain.roundtrip(rows, clients)
    out = torch.full_like(rows, float("nan"))
    if bool(ok.any()):
        out[ok] = chain.roundtrip(rows[ok], clients[ok.numpy()])
    return out


class CompressedExecutor:
    """An executor in one process (vectorized, sequential) with the chains' round trips
    applied to what would travel: one batched round trip over a chunk's clients."""

    def __init__(self, inner: Executor, up: Chain | None, down: Downlink | None) -> None:
        self.inner, self.up, self.down = inner, up, down
        self.base: torch.Tensor | None = None

    def train(self, round_: int, start: torch.Tensor, clients: np.ndarray, **budget) -> Updates:
        """`budget`: what the inner executor takes besides (local step budgets)."""
        self.base = start
        held = start
        if self.down is not None:
            self.down.advance(round_, start)
            self.down.sent.clear()  # nothing travels in one process
            held = self.down.held
        updates = self.inner.train(round_, held, clients, **budget)
        delta = updates.params - held
        if self.up is not None:
            delta = decoded_rows(self.up, delta, np.asarray(clients, dtype=np.int64))
        return replace(updates, params=start + delta)

    def close(self) -> None:
        self.inner.close()

    def state_dict(self) -> dict:
        return {"up": None if self.up is None else self.up.state_dict(),
                "down": None if self.down is None else self.down.state_dict()}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        if self.up is not None:
            self.up.load_state_dict(state["up"])
        if self.down is not None:
            self.down.load_state_dict(state["down"])


def with_compression(setup: ClientSetup, executor: Executor) -> Executor:
    """The executor the server trains on: unchanged when compression is off or when the
    executor carries it on its own wire (processes), else a CompressedExecutor."""
    cfg = setup.ctx.cfg
    if not cfg.compress.names or setup.kind.host is not None:
        return executor
    up = setup.ctx.compressor(setup.model)
    return CompressedExecutor(executor, up, make_downlink(cfg, setup.model))


class SteppedAggregation:
    """An aggregation followed by the chain's step on the aggregated delta."""

    def __init__(self, inner, executor) -> None:
        self.inner, self.executor = inner, executor

    def add(self, updates: torch.Tensor, num_examples: np.ndarray) -> None:
        self.inner.add(updates, num_examples)

    def result(self) -> torch.Tensor:
        base = self.executor.base
        return base + self.executor.up.aggregate(self.inner.result() - base)


def with_chain_step(new_aggregation, executor):
    """`new_aggregation`, or one that applies the chain's step when it has one."""
    if not steps_aggregate(getattr(executor, "up", None)):
        return new_aggregation
    return lambda: SteppedAggregation(new_aggregation(), executor)


def logical_bytes(cfg: RunConfig, params: int) -> tuple[int, int]:
    """Bytes one sampled client's update takes up and the model takes down in a round."""
    chain = make_chain(cfg.compress, [(params,)], cfg.seed)
    dense = 4 * params
    if chain is None:
        return dense, dense
    return chain.payload_bytes, chain.payload_bytes if cfg.compress.downlink else dense


# --- the processes executor's wire (processes.py) ----------------------------------------------


class ServerLink:
    """The server's side of a compressed process run: downlink payloads to hosts and the
    decoding of the hosts' payloads."""

    def __init__(self, up: Chain, down: Downlink | None, hosts: np.ndarray) -> None:
        self.up, self.down = up, down
        self.heard = dict.fromkeys((int(h) for h in hosts), 0)  # host -> last round it has
        self.base: torch.Tensor | None = None

    def begin(self, round_: int, start: torch.Tensor) -> None:
        self.base = start
        if self.down is not None:
            self.down.advance(round_, start)

    def send_model(self, comm: Communicator, host: int, round_: int) -> None:
        """The model this round's clients on `host` start from: dense, or the payloads the
        host has not had yet."""
        if self.down is None:
            comm.send(self.base, host)
            return
        missed = [r for r in sorted(self.down.sent) if r > self.heard[host]]
        comm.send(torch.tensor([len(missed)], dtype=torch.int64), host)
        if missed:  # a later chunk or attempt of the same round sends none
            comm.send(torch.cat([self.down.sent[r] for r in missed]), host)
        self.heard[host] = round_
        oldest = min(self.heard.values())
        for r in [r for r in self.down.sent if r <= oldest]:
            del self.down.sent[r]

    def recv_rows(self, comm: Communicator, host: int, count: int):
        """(rows, counts and losses) of `count` clients of `host`."""
        figures = torch.empty(count, 2)
        comm.recv(figures, host)
        payload = torch.empty(count, self.up.payload_bytes, dtype=torch.uint8)
        comm.recv(payload, host)
        return self.base + self.up.decode(payload), figures

    def state_dict(self) -> dict:
        return {"down": None if self.down is None else self.down.state_dict(),
                "heard": dict(self.heard)}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        if self.down is not None:
            self.down.load_state_dict(state["down"])
        self.heard = dict(state["heard"])


class HostLink:
    """A client host's side: the held model copy and the uplink chain of its clients."""

    def __init__(self, up: Chain, down: Chain | None, held: torch.Tensor) -> None:
        self.up, self.down, self.held = up, down, held

    def recv_model(self, comm: Communicator) -> torch.Tensor:
        if self.down is None:
            start = torch.empty_like(self.held)
            comm.recv(start, 0)
            return start
        count = torch.empty(1, dtype=torch.int64)
        comm.recv(count, 0)
        if not int(count[0]):
            return self.held
        payload = torch.empty(int(count[0]), self.down.payload_bytes, dtype=torch.uint8)
        comm.recv(payload, 0)
        for row in self.down.decode(payload):  # one after another, as the server added them
            self.held = self.held + row
        return self.held

    def send_rows(self, comm: Communicator, updates: Updates, start: torch.Tensor) -> None:
        """Counts and losses, then the payloads of the clients' deltas. A client
        whose delta is not finite sends a zero payload and a NaN loss (rejected)."""
        delta = updates.params - start
        figures = torch.empty(len(delta), 2)
        figures[:, 0] = torch.from_numpy(updates.num_examples)
        figures[:, 1] = torch.from_numpy(updates.losses)
        ok = finite(delta)
        figures[~ok, 1] = float("nan")
        payload = torch.zeros(len(delta), self.up.payload_bytes, dtype=torch.uint8)
        if bool(ok.any()):
            payload[ok] = self.up.encode(delta[ok], updates.clients[ok.numpy()])
        comm.send(figures, 0)
        comm.send(payload, 0)

    def state_dict(self) -> dict:
        return {"up": self.up.state_dict(),
                "down": None if self.down is None else self.down.state_dict(),
                "held": self.held}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.up.load_state_dict(state["up"])
        if self.down is not None:
            self.down.load_state_dict(state["down"])
        self.held = state["held"]


def server_link(setup: ClientSetup, hosts: np.ndarray) -> ServerLink | None:
    """The process server's link when compression is on, else None (the dense wire)."""
    up = setup.ctx.compressor(setup.model)
    if up is None:
        return None
    return ServerLink(up, make_downlink(setup.ctx.cfg, setup.model), hosts)


def host_link(setup: ClientSetup) -> HostLink | None:
    """A client host's link when compression is on, else None (the dense wire)."""
    ctx, model = setup.ctx, setup.model
    up = ctx.compressor(model)
    if up is None:
        return None
    down = down_chain(ctx.cfg, model) if ctx.cfg.compress.downlink else None
    held = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).float()
    return HostLink(up, down, held)
