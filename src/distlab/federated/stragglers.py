"""Synchronous federated rounds on the simulated clock: how long each sampled client takes,
which clients are past the round's deadline and what becomes of them.

A client's time in a round is its download of the global model, its local training at its
own speed (every sample of its local epochs) and its upload: the compressed payload when a
compression chain is on, the dense float32 model otherwise (clock.py gives the seconds). A
round lasts as long as its slowest kept client. With `system.deadline` the clients past it
are stragglers:

- drop (Bonawitz et al. 2019, "Towards Federated Learning at Scale: System Design"): their
  updates never arrive and they are not trained; the round lasts the deadline.
- partial (Li et al. 2020, "Federated Optimization in Heterogeneous Networks", FedProx): a
  straggler trains the local steps it finishes before the deadline (what is left of it after
  its download and upload) and sends that update; the round lasts the deadline. A straggler
  with no whole step in time is dropped.

Clients that are not available when an attempt at a round starts (`Clock.available`: trace
windows, system.availability) are dropped from its sample, and recorded as unavailable; the
round loop retries a round whose sample leaves too few usable updates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from distlab.clock import Clock
from distlab.transforms.chain import make_chain

if TYPE_CHECKING:
    from distlab.federated.executors import ClientSetup

# Why the failure message gives for a client an attempt did not train.
LATE, UNAVAILABLE = "past the deadline", "unavailable"


@dataclass(frozen=True)
class Work:
    """One attempt at a round on the clock: the clients that train (sorted), each one's step
    budget (None = all of its local steps), the stragglers (dropped or cut), the clients not
    available and the attempt's simulated seconds."""

    clients: np.ndarray
    steps: np.ndarray | None
    late: np.ndarray
    unavailable: np.ndarray
    seconds: float


class RoundClock:
    """The round loop's simulated clock (see the module doc)."""

    def __init__(self, clock: Clock, sizes, batch, epochs, down_bytes, up_bytes) -> None:
        self.clock, self.sizes = clock, np.asarray(sizes, dtype=np.int64)
        self.batch, self.epochs = batch, epochs
        self.down_bytes, self.up_bytes = down_bytes, up_bytes
        self.deadline, self.mode = clock.cfg.deadline, clock.cfg.stragglers

    @property
    def now(self) -> float:
        return self.clock.now

    def transfer_seconds(self, clients: np.ndarray) -> np.ndarray:
        """Each client's download plus upload seconds."""
        down = self.clock.link_seconds(clients, self.down_bytes)
        return down + self.clock.link_seconds(clients, self.up_bytes)

    def seconds(self, clients: np.ndarray) -> np.ndarray:
        """Each client's seconds for its whole local work: transfers plus compute."""
        samples = self.sizes[clients] * self.epochs
        return self.transfer_seconds(clients) + self.clock.compute_seconds(clients, samples)

    def plan(self, round_: int, clients: np.ndarray, at: float) -> Work:
        """Who of `clients` (sorted) trains in an attempt starting at simulated time `at`,
        with what step budget, and how long the attempt lasts."""
        ok = self.clock.available(round_, clients, at)
        unavailable, clients = clients[~ok], clients[ok]
        seconds = self.seconds(clients)
        if self.deadline is None or not (seconds > self.deadline).any():
            return Work(clients, None, clients[:0], unavailable, float(seconds.max(initial=0.0)))
        late = seconds > self.deadline
        if self.mode == "drop":
            return Work(clients[~late], None, clients[late], unavailable, self.deadline)
        steps = self.step_budget(clients)
        kept = steps > 0
        return Work(clients[kept], steps[kept], clients[late], unavailable, self.deadline)

    def step_budget(self, clients: np.ndarray) -> np.ndarray:
        """The local steps each client finishes before the deadline, at most all of them:
        whole epochs of its samples, then whole batches of the next (an epoch's batches
        are full but its last, so the batches that fit are full ones)."""
        left = self.deadline - self.transfer_seconds(clients)
        speed = self.clock.profile.speed[clients]
        budget = np.floor(np.maximum(left, 0.0) * speed / self.clock.cfg.sample_seconds)
        sizes = np.maximum(self.sizes[clients], 1)
        batch = sizes if self.batch is None else np.minimum(self.batch, sizes)
        per_epoch = -(-sizes // batch)
        epochs, rest = np.divmod(budget.astype(np.int64), sizes)
        steps = epochs * per_epoch + rest // batch
        return np.minimum(steps, self.epochs * per_epoch) * (self.sizes[clients] > 0)

    def advance(self, seconds: float) -> float:
        return self.clock.advance(seconds)

    def samples_done(self, work: Work, clients: np.ndarray) -> int:
        """Samples `clients` (of work.clients) trained on in the attempt: all their local
        epochs, or a straggler's budget of whole epochs and then full batches."""
        kept = np.isin(work.clients, clients)
        sizes = self.sizes[work.clients[kept]]
        full = sizes * self.epochs
        if work.steps is None:
            return int(full.sum())
        batch = np.maximum(sizes if self.batch is None else np.minimum(self.batch, sizes), 1)
        per_epoch = np.maximum(-(-sizes // batch), 1)
        epochs, rest = np.divmod(work.steps[kept], per_epoch)
        return int(np.minimum(epochs * sizes + rest * batch, full).sum())


def round_clock(setup: ClientSetup) -> RoundClock:
    """The round clock of a federated run: its clients' sizes and local work, the model's
    bytes down and its update's bytes up (a compression chain's payload when one is on)."""
    cfg, spec = setup.ctx.cfg, setup.spec
    shapes = [tuple(p.shape) for p in setup.model.parameters()]
    dense = 4 * sum(p.numel() for p in setup.model.parameters())
    chain = make_chain(cfg.compress, shapes, cfg.seed)
    up = dense if chain is None else chain.payload_bytes
    down = up if chain is not None and cfg.compress.downlink else dense
    clock = Clock(cfg.system, cfg.strategy.clients, cfg.seed)
    clock.now = setup.ctx.recorder.sim_seconds or 0.0  # a resumed run goes on from its clock
    return RoundClock(clock, setup.data.sizes, spec.batch, spec.epochs, down, up)


def cut_schedules(schedules: list, steps: np.ndarray | None) -> list:
    """Each client's batch list cut to its step budget (partial work); as given for None."""
    if steps is None:
        return schedules
    return [s[: int(k)] for s, k in zip(schedules, steps, strict=True)]
