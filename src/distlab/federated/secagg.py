"""Secure aggregation of a federated run, at the update seam (seam.py): SecAgg+ (Bell et al.
2020) among each round's sampled clients, with the protocol of transforms/secagg.py.

In the `updates` hook the clients of a round act: they share keys, quantize their deltas
and send masked inputs, which replace their rows (uint32 values in an int64 tensor: no
float survives masking). A client whose update is unusable (non-finite, no samples) or that
drops (secagg.dropout, seeded per round) sends nothing: the round loop counts it as failed.
The server's aggregation sees only those masked rows; it asks the survivors for their
shares, unmasks the sum and gives the mean of the dequantized deltas to the run's rule, so
the aggregate weighs every client alike (the server cannot weigh what it cannot see).
Importing this module loads no cryptography: only `make_secagg` does.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from distlab.federated.seam import RoundTransform

if TYPE_CHECKING:
    from distlab.config import RunConfig
    from distlab.federated.types import Aggregation, Updates

SECAGG_STREAM = 0x5EC0  # the generator stream of dropouts, graphs and stochastic rounding
DROPPED = "secagg: dropped after sharing keys"
UNUSABLE = "secagg: no usable update to mask"
ABORTED = "secagg: too few share holders left to unmask the round"


def check_secagg(cfg: RunConfig) -> None:
    """The rules secure aggregation puts on a fedavg run; ValueError naming the setting."""
    s, p = cfg.secagg, cfg.strategy
    if not s.enabled:
        return
    n = p.clients_per_round or p.clients
    if s.threshold is not None and s.threshold > n:
        raise ValueError(f"secagg.threshold ({s.threshold}) must be <= clients per round ({n})")
    if s.neighbours is not None and s.neighbours >= n:
        raise ValueError(f"secagg.neighbours ({s.neighbours}) must be < clients per round ({n})")
    if s.threshold is not None and s.neighbours is not None and s.threshold > s.neighbours + 1:
        raise ValueError(
            f"secagg.threshold ({s.threshold}) must be <= neighbours + 1 ({s.neighbours + 1}): "
            "a client's shares are held by its neighbours and itself"
        )
    if n * (2**s.bits - 1) >= 2**32:
        raise ValueError(
            f"secagg.bits ({s.bits}) overflows the sum of {n} clients modulo 2**32: "
            f"need clients per round * 2**bits < 2**32"
        )
    if p.aggregator != "mean":
        raise ValueError(
            f"secagg with aggregator {p.aggregator}: the server sees only the sum of the "
            "updates, so it can only average them (use aggregator=mean)"
        )
    if cfg.compress.names:
        raise ValueError(
            f"secagg with compress.kind={cfg.compress.kind}: a masked update is uniform over "
            "2**32 and sums only as a dense integer vector, so it cannot be compressed"
        )
    if cfg.privacy.mode == "central":
        raise ValueError(
            "secagg with privacy.mode=central: central DP clips each update and noises the "
            "sum at the server, which under secagg sees no update to clip (use privacy.mode="
            "dpsgd, noised on the clients)"
        )
    if p.executor == "flower":  # Flower's own SecAgg+ workflow (flower_secagg.py)
        from distlab.federated.flower_secagg import check_flower_secagg

        check_flower_secagg(cfg)
    if p.aggregate_chunk < n:
        raise ValueError(
            f"secagg runs one protocol per round: strategy.aggregate_chunk "
            f"({p.aggregate_chunk}) must be >= clients per round ({n})"
        )


def make_secagg(setup):
    """The run's SecAgg+ transform, or None when secagg.enabled is false."""
    cfg = setup.ctx.cfg
    if not cfg.secagg.enabled or setup.kind.name == "flower":  # deployed: Flower's protocol
        return None
    return SecAgg(cfg.secagg, cfg.seed)


def threshold(t: int | None, k: int | None, n: int) -> int:
    """The configured t, or more than half of a client's neighbours."""
    if t is not None:
        return t
    return min(k or n - 1, n - 1) // 2 + 1


class SecAgg(RoundTransform):
    """Masks what the clients send and unmasks only the sum at the server."""

    name = "secagg"

    def __init__(self, settings, seed: int) -> None:
        self.s, self.seed = settings, seed
        self.pending: list = []  # (cohort, senders) of trained chunks not yet aggregated
        self.bytes: dict[int, int] = {}
        self.seconds, self.instances = 0.0, 0
        self.start: torch.Tensor | None = None

    def updates(self, round_: int, start: torch.Tensor, updates: Updates) -> Updates:
        from distlab.transforms import secagg as protocol

        begin = time.perf_counter()
        ids = [int(c) for c in updates.clients]
        rng = np.random.default_rng([self.seed, SECAGG_STREAM, round_, *ids[:1]])
        lost = dict(updates.lost)
        unusable = unusable_rows(updates)
        lost.update(
            {u: UNUSABLE for u, b in zip(ids, unusable, strict=True) if b and u not in lost}
        )
        dropped = ~unusable & (rng.random(len(ids)) < self.s.dropout)
        lost.update({u: DROPPED for u, d in zip(ids, dropped, strict=True) if d})
        send = ~unusable & ~dropped
        senders = [u for u, ok in zip(ids, send, strict=True) if ok]
        self.instances += 1
        tag = f"{round_}:{self.instances}".encode()
        t = threshold(self.s.threshold, self.s.neighbours, len(ids))
        cohort = protocol.start_cohort(ids, self.s.neighbours, t, tag, rng)
        q = protocol.quantize(
            (updates.params[torch.from_numpy(send)] - start).numpy(), self.s.clip, self.s.bits, rng
        )
        rows = torch.zeros(updates.params.shape, dtype=torch.int64)
        rows[torch.from_numpy(send)] = torch.from_numpy(
            protocol.masked_inputs(cohort, senders, q).astype(np.int64)
        )
        self.start = start  # the round's global model (the aggregation is made before it)
        if protocol.unmaskable(cohort.graph, set(senders), t):
            self.pending.append((cohort, senders))
        else:  # the server aborts before round 3: no secret can be rebuilt, nothing counts
            lost.update(dict.fromkeys(senders, ABORTED))
            self.count(cohort)
        self.seconds += time.perf_counter() - begin
        return type(updates)(
            updates.clients, rows, updates.num_examples, updates.metrics, updates.layout, None, lost
        )

    def count(self, cohort) -> None:
        for u, n in cohort.bytes.items():
            self.bytes[u] = self.bytes.get(u, 0) + n

    def aggregation(self, inner: Aggregation) -> Aggregation:
        self.pending = []  # a fresh attempt at the round: its chunks are yet to train
        return SecureSum(self, inner)

    def fields(self, round_: int) -> dict:
        clients = len(self.bytes)
        out = {
            "secagg_bytes": round(sum(self.bytes.values()) / clients, 1) if clients else None,
            "secagg_seconds": round(self.seconds / clients, 6) if clients else None,
        }
        self.bytes, self.seconds = {}, 0.0
        return out


def unusable_rows(updates: Updates) -> np.ndarray:
    """Rows a client would not mask and send: lost, malformed, non-finite or without samples
    (the server could not tell them once masked)."""
    params = updates.params
    bad = ~torch.isfinite(params).all(dim=1).numpy() if params.shape[1] else np.zeros(len(params))
    bad = bad | ~np.isfinite(updates.losses) | (updates.num_examples <= 0)
    if updates.malformed is not None:
        bad = bad | updates.malformed
    return bad | np.array([int(c) in updates.lost for c in updates.clients], dtype=bool)


class SecureSum:
    """The server's side: the masked rows of each chunk, unmasked to their sum with the
    survivors' shares; the mean delta goes to the run's rule as one model."""

    def __init__(self, owner: SecAgg, inner: Aggregation) -> None:
        self.owner, self.inner = owner, inner
        self.total: torch.Tensor | float = 0.0
        self.count = 0

    def add(self, rows: torch.Tensor, num_examples: np.ndarray) -> None:
        from distlab.transforms import secagg as protocol

        begin = time.perf_counter()
        cohort, senders = self.owner.pending.pop(0)
        if len(rows) != len(senders):
            raise RuntimeError(f"secagg: {len(rows)} masked rows for {len(senders)} senders")
        masked = {u: row.numpy().astype(np.uint32) for u, row in zip(senders, rows, strict=True)}
        total = protocol.finish_cohort(cohort, masked)
        s = self.owner.s
        mean = protocol.dequantize_mean(total, len(senders), s.clip, s.bits)
        self.total += torch.from_numpy(mean).double() * len(senders)
        self.count += len(senders)
        self.owner.count(cohort)
        self.owner.seconds += time.perf_counter() - begin

    def result(self) -> torch.Tensor:
        if not self.count:
            return self.inner.result()
        start = self.owner.start
        model = start + (self.total / self.count).to(start.dtype)
        self.inner.add(model[None], np.ones(1, dtype=np.int64))
        return self.inner.result()
