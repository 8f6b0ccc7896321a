"""Defenses beside the median, the trimmed mean and Krum: Bulyan, centered clipping and norm
bounding, as pure functions on (clients, P) rows and as aggregations fed chunk by chunk.

Bulyan needs every update of a round at once (Krum's distances between all pairs), so it is
collected like Krum. Norm bounding streams: each chunk's bounded deltas are folded into one
running weighted sum. Centered clipping streams when it makes one iteration (L = 1, the
paper's setting): its centre is known before the round (the previous round's aggregate), so
each chunk adds its clipped differences to one running sum; with L > 1 each iteration needs
the new centre and every update again, so the chunks are kept.

Centered clipping and norm bounding depend on where the origin is: they clip DELTAS. The
rows the federated round loop aggregates are client models, so `OnDeltas` hands such a rule
`row - start` (the round's start, read from the executor once the chunk has trained) and
gives back `start + aggregate`; it also keeps the last aggregate delta as the next round's
centre. This module imports nothing of the strategies (aggregate.py registers its rules).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch

# The rules that clip deltas: the round loop feeds them `row - start` (see OnDeltas).
DELTA_RULES = ("centered-clip", "norm-bound")

# The fewest clients per round each rule is defined on, as a * f + b for f Byzantine ones,
# and the bound in words (Blanchard et al. 2017 for Krum, El Mhamdi et al. 2018 for Bulyan).
FEWEST = {"krum": (2, 3, "> 2f + 2"), "bulyan": (4, 3, ">= 4f + 3")}


def rows_of(updates) -> torch.Tensor:
    """One float (clients, P) tensor from a stacked tensor or a list of flat vectors."""
    if isinstance(updates, torch.Tensor):
        return updates.float()
    return torch.stack([torch.as_tensor(u) for u in updates]).float()


def fewest_clients(name: str, f: int) -> int:
    """The fewest updates rule `name` is defined on with f Byzantine clients (1 if no bound)."""
    if name not in FEWEST:
        return 1
    a, b, _ = FEWEST[name]
    return a * f + b


# --- Bulyan ------------------------------------------------------------------------------------


def krum_order(dist: torch.Tensor, f: int, count: int) -> list[int]:
    """`count` rows chosen one after another by Krum, each from the rows not yet chosen, its
    score over max(1, left - f - 2) nearest others (as Flower's aggregate_krum counts them)."""
    pool, chosen = list(range(len(dist))), []
    for _ in range(count):
        sub = dist[pool][:, pool]
        sub.fill_diagonal_(float("inf"))
        nearest = max(1, len(pool) - f - 2)
        scores = torch.sort(sub, dim=1).values[:, :nearest]
        scores = torch.where(torch.isinf(scores), 0.0, scores).sum(dim=1)
        chosen.append(pool.pop(int(torch.argmin(scores))))  # the first of equal scores
    return chosen


def bulyan(updates, num_examples: Sequence[float] | None = None, f: int = 0) -> torch.Tensor:
    """Bulyan (El Mhamdi et al. 2018, "The Hidden Vulnerability of Distributed Learning in
    Byzantium"): theta = n - 2f updates chosen by repeated Krum, then per coordinate the mean
    of the beta = theta - 2f chosen values closest to their median; needs n >= 4f + 3.
    Ignores num_examples, as the paper does.

    >>> bulyan([torch.tensor([v]) for v in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 90.0)], f=1).tolist()
    [2.0]
    """
    rows = rows_of(updates)
    n = len(rows)
    if f < 0 or n < fewest_clients("bulyan", f):
        raise ValueError(f"bulyan needs clients >= 4 * f + 3 (got {n} clients, f={f})")
    theta, beta = n - 2 * f, n - 4 * f
    dist = torch.cdist(rows.double(), rows.double()).pow(2)
    chosen = rows[krum_order(dist, f, theta)].double()
    ordered = torch.sort(chosen, dim=0).values
    centre = (ordered[(theta - 1) // 2] + ordered[theta // 2]) / 2  # np.median's middle
    closest = torch.argsort((chosen - centre).abs(), dim=0, stable=True)[:beta]
    return torch.gather(chosen, 0, closest).mean(dim=0).float()


# --- centered clipping and norm bounding -------------------------------------------------------


def clipped(rows: torch.Tensor, radius: float) -> torch.Tensor:
    """Each row scaled to norm <= radius (rows already shorter are left as they are)."""
    norms = rows.norm(dim=1, keepdim=True)
    return rows * torch.clamp(radius / norms, max=1.0)  # a zero row: radius / 0 = inf -> 1


class CenteredClipping:
    """Centered clipping (Karimireddy et al. 2021, "Learning from History for Byzantine
    Robust Optimization"): v <- v + mean_i clip(x_i - v, tau), `iters` times, from `center`
    (None = 0). With one iteration the chunks stream into one running sum (float64); with
    more they are kept. Unweighted, as in the paper."""

    def __init__(self, radius: float, iters: int = 1, center: torch.Tensor | None = None):
        if radius <= 0 or iters < 1:
            raise ValueError(
                f"centered clipping needs radius > 0 and iters >= 1 (got {radius}, {iters})"
            )
        self.radius, self.iters, self.center = radius, iters, center
        self.total: torch.Tensor | None = None
        self.count = 0
        self.kept: list[torch.Tensor] = []

    def add(self, updates, num_examples: Sequence[float] | None = None) -> None:
        rows = rows_of(updates)
        self.count += len(rows)
        if self.iters > 1:
            self.kept.append(rows.double())
            return
        # the rows in float32 as sent, the running sum in float64
        centre = self.start(rows.shape[1]).float()
        part = clipped(rows - centre, self.radius).sum(dim=0).double()
        self.total = part if self.total is None else self.total + part

    def start(self, size: int) -> torch.Tensor:
        return (
            torch.zeros(size, dtype=torch.float64) if self.center is None else self.center.double()
        )

    def result(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("updates must hold at least one client update (got 0)")
        if self.iters == 1:
            return (self.start(len(self.total)) + self.total / self.count).float()
        rows = torch.cat(self.kept)
        self.kept = []
        v = self.start(rows.shape[1])
        for _ in range(self.iters):
            v = v + clipped(rows - v, self.radius).mean(dim=0)
        return v.float()


class NormBounding:
    """Norm bounding (Sun et al. 2019, "Can You Really Backdoor Federated Learning?"): each
    delta scaled to norm <= `bound`, then the mean weighted by sample counts, streamed chunk
    by chunk as one running float64 sum."""

    def __init__(self, bound: float) -> None:
        if bound <= 0:
            raise ValueError(f"norm bounding needs bound > 0 (got {bound})")
        self.bound = bound
        self.total: torch.Tensor | None = None
        self.weight = 0.0

    def add(self, updates, num_examples: Sequence[float]) -> None:
        rows = rows_of(updates)
        weights = torch.as_tensor(np.asarray(num_examples, dtype=np.float64))
        if weights.shape != (len(rows),) or (weights < 0).any():
            raise ValueError(f"num_examples must be {len(rows)} non-negative counts")
        # the rows in float32 as sent, the running sum in float64
        part = (weights.float() @ clipped(rows, self.bound)).double()
        self.total = part if self.total is None else self.total + part
        self.weight += float(weights.sum())

    def result(self) -> torch.Tensor:
        if self.total is None or self.weight <= 0:
            raise ValueError("norm bounding needs updates with a positive total count")
        return (self.total / self.weight).float()


def centered_clip(
    updates, num_examples=None, radius: float = 1.0, iters: int = 1, center=None
) -> torch.Tensor:
    """Centered clipping of one round's deltas at once (see CenteredClipping).

    >>> centered_clip([torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.0])], radius=1.0).tolist()
    [0.30000001192092896, 0.4000000059604645]
    """
    rule = CenteredClipping(radius, iters, center)
    rule.add(updates)
    return rule.result()


def norm_bound(updates, num_examples: Sequence[float], bound: float = 1.0) -> torch.Tensor:
    """Norm bounding of one round's deltas at once (see NormBounding).

    >>> norm_bound([torch.tensor([3.0, 4.0]), torch.tensor([1.0, 0.0])], [1, 1], 1.0).tolist()
    [0.800000011920929, 0.4000000059604645]
    """
    rule = NormBounding(bound)
    rule.add(updates, num_examples)
    return rule.result()


# --- rules on deltas in the round loop ---------------------------------------------------------


class Aggregation(Protocol):
    def add(self, updates: torch.Tensor, num_examples: np.ndarray) -> None: ...

    def result(self) -> torch.Tensor: ...


class DeltaRule:
    """Each round's aggregation of a rule on deltas, fed client models: `new_inner(center)`
    makes the rule's aggregation around a centre (the last round's aggregate delta, None in
    the first round), `start()` gives the round's start once a chunk has trained."""

    def __init__(
        self,
        new_inner: Callable[[torch.Tensor | None], Aggregation],
        start: Callable[[], torch.Tensor],
    ) -> None:
        self.new_inner, self.start = new_inner, start
        self.center: torch.Tensor | None = None

    def __call__(self) -> OnDeltas:
        return OnDeltas(self)


class OnDeltas:
    """One attempt at a round under a DeltaRule; only a finished round moves the centre."""

    def __init__(self, rule: DeltaRule) -> None:
        self.rule, self.inner = rule, rule.new_inner(rule.center)
        self.base: torch.Tensor | None = None

    def add(self, updates, num_examples) -> None:
        self.base = self.rule.start()
        self.inner.add(rows_of(updates) - self.base, num_examples)

    def result(self) -> torch.Tensor:
        delta = self.inner.result()
        self.rule.center = delta
        return self.base + delta


# --- the checks before a run starts ------------------------------------------------------------


def check_defense(aggregator: str, krum_f: int, per_round: int, attack) -> None:
    """Krum and Bulyan must be defined on the clients of a round, for krum_f and, with an
    attack on, for its attackers per round f = round(attack.fraction * clients per round)."""
    if aggregator not in FEWEST:
        return
    bound = FEWEST[aggregator][2]
    if per_round < fewest_clients(aggregator, krum_f):
        raise ValueError(
            f"aggregator {aggregator} needs clients per round {bound.replace('f', ' * krum_f')} "
            f"(got {per_round}, f={krum_f})"
        )
    if attack is None or not attack.on:
        return
    attackers = round(attack.fraction * per_round)
    if per_round < fewest_clients(aggregator, attackers):
        most = max(f for f in range(per_round + 1) if per_round >= fewest_clients(aggregator, f))
        raise ValueError(
            f"attack.fraction {attack.fraction} puts f = {attackers} attackers among the "
            f"{per_round} clients per round, but aggregator {aggregator} needs clients per "
            f"round {bound} (at most f = {most}, attack.fraction <= {most / per_round:.2f})"
        )
