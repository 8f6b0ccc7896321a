"""Replica samplers: which sample indices one worker uses for each batch of an epoch.

- split-batch: one global permutation per epoch, cut into global batches of `batch_size`;
  each global batch is split into `world` contiguous chunks and rank r takes chunk r.
  Concatenating the ranks' chunks gives exactly the centralized batch order.
- random: DistributedSampler semantics. One global permutation per epoch, padded by
  repeating its head to a multiple of `world`; rank r takes every world-th index from r.
  Then batches of `batch_size` per rank.
- balanced: per class, a permutation dealt round-robin to ranks, so each rank holds an
  equal class-balanced share; ranks are padded to equal length (as random), then shuffled
  and batched.

All ranks get the same number of batches, so no rank waits for a peer that has finished.
"""

from __future__ import annotations

import numpy as np

SAMPLERS = ("split-batch", "random", "balanced")


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


def epoch_batches(
    mode: str, labels: np.ndarray, batch_size: int, epoch: int, seed: int, rank: int, world: int
) -> list[np.ndarray]:
    """Index batches for `rank` in `epoch`; identical across calls for the same arguments."""
    if mode not in SAMPLERS:
        raise ValueError(f"unknown sampler {mode!r} (allowed: {', '.join(SAMPLERS)})")
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}) (got {rank})")
    rng = epoch_rng(seed, epoch)
    if mode == "split-batch":
        return split_batch(len(labels), batch_size, rng, rank, world)
    own = (
        random_share(len(labels), rng, rank, world)
        if mode == "random"
        else balanced_share(np.asarray(labels), rng, rank, world)
    )
    return [own[i : i + batch_size] for i in range(0, len(own), batch_size)]


def split_batch(n: int, batch_size: int, rng, rank: int, world: int) -> list[np.ndarray]:
    """Chunk r of every global batch. A final global batch smaller than `world` is dropped,
    so no rank gets an empty chunk."""
    order = rng.permutation(n)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    batches = [b for b in batches if len(b) >= world]
    return [np.array_split(b, world)[rank] for b in batches]


def random_share(n: int, rng, rank: int, world: int) -> np.ndarray:
    """DistributedSampler: pad by repeating the order from its head so every rank gets
    ceil(n / world); np.resize repeats it as often as needed, also when world > n."""
    order = rng.permutation(n)
    return np.resize(order, -(-n // world) * world)[rank::world]


def balanced_share(labels: np.ndarray, rng, rank: int, world: int) -> np.ndarray:
    """Deal the samples class by class round-robin across ranks (the deal continues across
    classes), so each rank holds floor or ceil of count / world of every class. Shorter
    ranks are padded by dealing on from the head of the deal, then each share is shuffled."""
    dealt = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == cls)) for cls in np.unique(labels)]
    )
    own = np.resize(dealt, -(-len(dealt) // world) * world)[rank::world]
    return own[rng.permutation(len(own))]


def subset_batches(
    indices: np.ndarray, batch_size: int, epoch: int, seed: int, stream: int = 0
) -> list[np.ndarray]:
    """A worker's own index subset (its partition), permuted every epoch from (seed, epoch,
    stream) and cut into batches of `batch_size` (the last one may be smaller)."""
    rng = np.random.default_rng([seed, epoch, stream])
    order = np.asarray(indices)[rng.permutation(len(indices))]
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
