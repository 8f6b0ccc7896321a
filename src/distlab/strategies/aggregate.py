"""Aggregators: pure functions from client updates (flat vectors) and sample counts to one vector.

Every function takes `updates` as a list of equal-length 1-D tensors or arrays, or as one
(clients, P) tensor, and returns a float32 tensor of shape (P,). Robust aggregators ignore
`num_examples` where their paper does (median, trimmed mean, Krum's choice).

`AGGREGATORS` maps each name a strategy accepts to one signature, (updates, num_examples,
AggregatorOptions) -> tensor, so a strategy picks a rule by name and the round loop only
sees a function; `needed_updates` says how many updates a rule needs at least.

A round's updates can also arrive chunk by chunk (`start_aggregation`): the weighted mean
streams, holding one running sum, so a round's memory grows with the chunk and not with its
clients. The coordinate-wise median, the trimmed mean and Krum need every update at once (a
median or a trimmed mean needs each coordinate's order over all clients, Krum the distances
between all pairs), so for them the chunks are collected and the rule runs on all of them:
their memory still grows with the clients of a round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from distlab.strategies import robust

ClientVectors = torch.Tensor | Sequence[torch.Tensor] | Sequence[np.ndarray]


def stack_updates(updates: ClientVectors) -> torch.Tensor:
    """One (clients, P) float tensor from a list of flat vectors or an already stacked tensor."""
    if isinstance(updates, torch.Tensor):
        stacked = updates
    else:
        if len(updates) == 0:
            raise ValueError("updates must hold at least one client update (got 0)")
        stacked = torch.stack([torch.as_tensor(u) for u in updates])
    if stacked.ndim != 2 or stacked.shape[0] == 0:
        raise ValueError(
            f"updates must be (clients, P) with clients >= 1 (got {tuple(stacked.shape)})"
        )
    return stacked.float()


def weighted_mean(updates: ClientVectors, num_examples: Sequence[float]) -> torch.Tensor:
    """Sum of n_k / n * w_k: the FedAvg aggregate (McMahan et al. 2017, "Communication-
    Efficient Learning of Deep Networks from Decentralized Data").

    >>> weighted_mean([torch.tensor([0.0, 2.0]), torch.tensor([4.0, 6.0])], [1, 3]).tolist()
    [3.0, 5.0]
    """
    stacked = stack_updates(updates)
    weights = torch.as_tensor(np.asarray(num_examples, dtype=np.float64)).float()
    if weights.shape != (stacked.shape[0],) or float(weights.sum()) <= 0 or (weights < 0).any():
        raise ValueError(
            f"num_examples must be {stacked.shape[0]} non-negative counts with a positive sum "
            f"(got {np.asarray(num_examples).tolist()})"
        )
    return (weights / weights.sum()) @ stacked


def median(updates: ClientVectors, num_examples: Sequence[float] | None = None) -> torch.Tensor:
    """Coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates"). With an even count, the mean of the two middle values.

    >>> median([torch.tensor([1.0]), torch.tensor([5.0]), torch.tensor([2.0])]).tolist()
    [2.0]
    """
    stacked = stack_updates(updates)
    return torch.quantile(stacked, 0.5, dim=0) if len(stacked) > 1 else stacked[0].clone()


def trimmed_mean(
    updates: ClientVectors, num_examples: Sequence[float] | None = None, trim_ratio: float = 0.1
) -> torch.Tensor:
    """Coordinate-wise trimmed mean (Yin et al. 2018): per coordinate, drop the
    floor(trim_ratio * n) largest and as many smallest values, average the rest.

    >>> trimmed_mean([torch.tensor([v]) for v in (0.0, 1.0, 2.0, 100.0)], trim_ratio=0.25).tolist()
    [1.5]
    """
    if not 0 <= trim_ratio < 0.5:
        raise ValueError(f"trim_ratio must be in [0, 0.5) (got {trim_ratio})")
    stacked = stack_updates(updates)
    cut = int(trim_ratio * len(stacked))
    ordered = torch.sort(stacked, dim=0).values
    return ordered[cut : len(stacked) - cut].mean(dim=0)


def krum_scores(stacked: torch.Tensor, f: int) -> torch.Tensor:
    """Per update, the sum of squared distances to its n - f - 2 nearest other updates."""
    n = len(stacked)
    dist = torch.cdist(stacked.double(), stacked.double()).pow(2)
    dist.fill_diagonal_(float("inf"))
    nearest = torch.sort(dist, dim=1).values[:, : n - f - 2]
    return nearest.sum(dim=1)


def krum(
    updates: ClientVectors, num_examples: Sequence[float] | None = None, f: int = 0, m: int = 1
) -> torch.Tensor:
    """Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant
    Gradient Descent"): the update with the smallest sum of squared distances to its
    n - f - 2 nearest neighbours; needs n > 2f + 2. With m > 1 (Multi-Krum), the mean of the
    m best, weighted by num_examples when given.

    >>> krum([torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([2.0]),
    ...       torch.tensor([50.0])], f=0).tolist()
    [1.0]
    """
    stacked = stack_updates(updates)
    n = len(stacked)
    if f < 0 or n <= 2 * f + 2:
        raise ValueError(f"krum needs clients > 2 * f + 2 (got {n} clients, f={f})")
    if not 1 <= m <= n:
        raise ValueError(f"krum m must be in [1, {n}] (got {m})")
    best = torch.argsort(krum_scores(stacked, f), stable=True)[:m]
    if m == 1:
        return stacked[best[0]].clone()
    weights = np.ones(m) if num_examples is None else np.asarray(num_examples)[best.numpy()]
    return weighted_mean(stacked[best], weights)


@dataclass(frozen=True)
class AggregatorOptions:
    """The robust aggregators' settings (a rule ignores those it does not use)."""

    trim_ratio: float = 0.1
    krum_f: int = 0
    krum_m: int = 1
    norm_bound: float = 1.0
    clip_radius: float = 1.0
    clip_iters: int = 1
    clip_center: torch.Tensor | None = field(default=None, compare=False)
    """Centered clipping's centre (the previous round's aggregate delta; None = 0)."""


Aggregator = Callable[[ClientVectors, Sequence[float], AggregatorOptions], torch.Tensor]

AGGREGATORS: dict[str, Aggregator] = {
    "mean": lambda updates, counts, options: weighted_mean(updates, counts),
    "median": lambda updates, counts, options: median(updates, counts),
    "trimmed-mean": lambda updates, counts, o: trimmed_mean(updates, counts, o.trim_ratio),
    "krum": lambda updates, counts, o: krum(updates, counts, o.krum_f, o.krum_m),
    "bulyan": lambda updates, counts, o: robust.bulyan(stack_updates(updates), counts, o.krum_f),
    "centered-clip": lambda updates, counts, o: robust.centered_clip(
        stack_updates(updates), counts, o.clip_radius, o.clip_iters, o.clip_center
    ),
    "norm-bound": lambda updates, counts, o: robust.norm_bound(
        stack_updates(updates), counts, o.norm_bound
    ),
}


class StreamingMean:
    """The weighted mean fed chunk by chunk: each chunk's own weighted mean, times its sample
    count, summed in float64 and divided by the total count at the end.

    Holds no chunk: memory is one P vector whatever the number of chunks. A round of one
    chunk gives exactly `weighted_mean` of it; with several chunks the result equals the
    one-shot mean up to float32 rounding. Each chunk's counts must have a positive sum.
    """

    def __init__(self) -> None:
        self.chunks = 0
        self.only: torch.Tensor | None = None  # the first chunk's mean, the answer if alone
        self.total: torch.Tensor | None = None
        self.weight = 0.0

    def add(self, updates: ClientVectors, num_examples: Sequence[float]) -> None:
        mean = weighted_mean(updates, num_examples)
        weight = float(np.asarray(num_examples, dtype=np.float64).sum())
        part = mean.double() * weight
        self.total = part if self.total is None else self.total + part
        self.only = mean if self.chunks == 0 else None
        self.weight += weight
        self.chunks += 1

    def result(self) -> torch.Tensor:
        if self.chunks == 0:
            raise ValueError("updates must hold at least one client update (got 0)")
        if self.only is not None:
            return self.only
        return (self.total / self.weight).float()


class Collected:
    """A rule that needs every update at once, fed chunk by chunk: keeps the chunks and runs
    the rule on all of them, in the order they came (memory grows with the round)."""

    def __init__(self, rule: Callable[[torch.Tensor, np.ndarray], torch.Tensor]) -> None:
        self.rule = rule
        self.chunks: list[torch.Tensor] = []
        self.counts: list[np.ndarray] = []

    def add(self, updates: ClientVectors, num_examples: Sequence[float]) -> None:
        self.chunks.append(stack_updates(updates))
        self.counts.append(np.asarray(num_examples))

    def result(self) -> torch.Tensor:
        if not self.chunks:
            raise ValueError("updates must hold at least one client update (got 0)")
        stacked = self.chunks[0] if len(self.chunks) == 1 else torch.cat(self.chunks)
        self.chunks = []  # the concatenated copy replaces the chunks before the rule runs
        return self.rule(stacked, np.concatenate(self.counts))


# The rules with a chunked form, made from the options; every other one collects its chunks
# (centered clipping keeps them itself when it makes more than one iteration).
STREAMING = {
    "mean": lambda options: StreamingMean(),
    "norm-bound": lambda o: robust.NormBounding(o.norm_bound),
    "centered-clip": lambda o: robust.CenteredClipping(o.clip_radius, o.clip_iters, o.clip_center),
}


def start_aggregation(name: str, options: AggregatorOptions):
    """A fresh aggregation of one round under rule `name`, fed with `add(updates,
    num_examples)` per chunk and read with `result()`."""
    rule = get_aggregator(name)
    if name in STREAMING:
        return STREAMING[name](options)
    return Collected(lambda updates, counts: rule(updates, counts, options))


def get_aggregator(name: str) -> Aggregator:
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r} (allowed: {', '.join(AGGREGATORS)})")
    return AGGREGATORS[name]


def needed_updates(name: str, options: AggregatorOptions) -> int:
    """The fewest updates rule `name` is defined on: Krum needs more than 2f + 2, Bulyan at
    least 4f + 3.

    >>> options = AggregatorOptions(krum_f=1)
    >>> needed_updates("krum", options), needed_updates("mean", options)
    (5, 1)
    """
    get_aggregator(name)
    return robust.fewest_clients(name, options.krum_f)
