"""Replica samplers: coverage per epoch, equal batch counts across ranks, split-batch order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distlab.data.samplers import epoch_batches, subset_batches

FAST = settings(max_examples=50, deadline=None)


@st.composite
def sampler_case(draw):
    """(labels, batch_size, world, seed); world may exceed the number of samples."""
    classes = draw(st.integers(1, 5))
    labels = draw(st.lists(st.integers(0, classes - 1), min_size=1, max_size=40))
    return (
        np.array(labels),
        draw(st.integers(1, 9)),
        draw(st.integers(1, 6)),
        draw(st.integers(0, 2**32 - 1)),
    )


def all_ranks(mode: str, labels, batch_size: int, world: int, seed: int, epoch: int = 0):
    return [epoch_batches(mode, labels, batch_size, epoch, seed, r, world) for r in range(world)]


@FAST
@given(sampler_case(), st.sampled_from(["random", "balanced"]))
def test_each_rank_walks_an_equal_share_covering_the_data(case, mode):
    labels, batch_size, world, seed = case
    n = len(labels)

    ranks = all_ranks(mode, labels, batch_size, world, seed)

    shares = [np.concatenate(batches) for batches in ranks]
    # Padding: every rank gets ceil(n / world), so the epoch holds n samples plus repeats.
    assert all(len(s) == -(-n // world) for s in shares)
    assert len({len(batches) for batches in ranks}) == 1
    assert set(np.concatenate(shares).tolist()) == set(range(n))
    assert all(len(b) <= batch_size for batches in ranks for b in batches)


@FAST
@given(sampler_case())
def test_split_batch_chunks_rejoin_into_the_single_worker_order(case):
    labels, batch_size, world, seed = case

    single = epoch_batches("split-batch", labels, batch_size, 0, seed, 0, 1)
    ranks = all_ranks("split-batch", labels, batch_size, world, seed)

    # A last global batch smaller than world is dropped so no rank gets an empty chunk.
    kept = [b for b in single if len(b) >= world]
    assert all(len(batches) == len(kept) for batches in ranks)
    for step, whole in enumerate(kept):
        np.testing.assert_array_equal(np.concatenate([r[step] for r in ranks]), whole)


@FAST
@given(sampler_case())
def test_balanced_gives_every_rank_the_same_class_mix(case):
    labels, batch_size, world, seed = case
    classes = labels.max() + 1

    ranks = all_ranks("balanced", labels, batch_size, world, seed)

    counts = np.stack([np.bincount(labels[np.concatenate(b)], minlength=classes) for b in ranks])
    spread = counts.max(axis=0) - counts.min(axis=0)
    # The round-robin deal gives floor or ceil per class; padding adds at most one more.
    assert (spread <= (1 if len(labels) % world == 0 else 2)).all()


def test_balanced_hand_example_splits_each_class_in_half():
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])

    ranks = all_ranks("balanced", labels, 3, 2, seed=7)

    for batches in ranks:
        assert np.bincount(labels[np.concatenate(batches)]).tolist() == [2, 2]
        assert [len(b) for b in batches] == [3, 1]


def test_random_pads_from_the_head_when_world_exceeds_samples():
    labels = np.array([0, 1])

    ranks = all_ranks("random", labels, 4, 5, seed=0)

    assert [len(batches) for batches in ranks] == [1] * 5
    assert set(np.concatenate([b[0] for b in ranks]).tolist()) == {0, 1}


@pytest.mark.parametrize("mode", ["split-batch", "random", "balanced"])
def test_same_seed_and_epoch_repeat_and_another_epoch_reshuffles(mode):
    labels = np.arange(64) % 4

    first = epoch_batches(mode, labels, 8, 0, 3, 1, 2)
    again = epoch_batches(mode, labels, 8, 0, 3, 1, 2)
    later = epoch_batches(mode, labels, 8, 1, 3, 1, 2)

    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(np.concatenate(first), np.concatenate(later))


@pytest.mark.parametrize(
    ("mode", "rank", "world", "message"),
    [
        ("ring", 0, 1, r"unknown sampler 'ring' \(allowed: split-batch, random, balanced\)"),
        ("random", 2, 2, r"rank must be in \[0, 2\) \(got 2\)"),
    ],
)
def test_bad_mode_or_rank_is_refused(mode, rank, world, message):
    with pytest.raises(ValueError, match=message):
        epoch_batches(mode, np.zeros(4, int), 2, 0, 0, rank, world)


def test_subset_batches_walk_a_workers_own_indices_once_per_epoch():
    own = np.array([10, 11, 12, 13, 14, 15, 16])

    first = subset_batches(own, 3, epoch=0, seed=5, stream=1)
    again = subset_batches(own, 3, epoch=0, seed=5, stream=1)
    second = subset_batches(own, 3, epoch=1, seed=5, stream=1)

    assert [len(b) for b in first] == [3, 3, 1]
    assert sorted(np.concatenate(first)) == own.tolist()
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(np.concatenate(first), np.concatenate(second))
