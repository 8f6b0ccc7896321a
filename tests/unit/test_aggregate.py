"""Aggregators on hand-worked values."""

import numpy as np
import pytest
import torch

from distlab.strategies.aggregate import (
    AGGREGATORS,
    AggregatorOptions,
    Collected,
    StreamingMean,
    get_aggregator,
    krum,
    median,
    needed_updates,
    start_aggregation,
    trimmed_mean,
    weighted_mean,
)


def vecs(*rows):
    return [torch.tensor(r, dtype=torch.float32) for r in rows]


def test_weighted_mean_weights_by_sample_count():
    updates = vecs([1.0, 0.0], [4.0, 8.0])

    out = weighted_mean(updates, [3, 1])

    # (3 * 1 + 1 * 4) / 4 = 1.75 ; (3 * 0 + 1 * 8) / 4 = 2
    assert out.tolist() == pytest.approx([1.75, 2.0])


def test_weighted_mean_accepts_numpy_and_stacked_inputs():
    arrays = [np.array([2.0, 2.0], dtype=np.float32), np.array([0.0, 4.0], dtype=np.float32)]

    from_list = weighted_mean(arrays, [1, 1])
    from_stack = weighted_mean(torch.tensor(np.stack(arrays)), np.array([1, 1]))

    assert from_list.tolist() == [1.0, 3.0]
    assert from_stack.tolist() == [1.0, 3.0]


def test_weighted_mean_rejects_zero_total_weight():
    with pytest.raises(ValueError, match="num_examples"):
        weighted_mean(vecs([1.0], [2.0]), [0, 0])


def test_median_is_coordinatewise_and_ignores_an_outlier():
    updates = vecs([1.0, 10.0], [2.0, -5.0], [1000.0, 0.0])

    out = median(updates, [1, 1, 1])

    assert out.tolist() == [2.0, 0.0]


def test_median_of_even_count_averages_the_middle_pair():
    assert median(vecs([1.0], [2.0], [4.0], [100.0])).tolist() == [3.0]


def test_trimmed_mean_drops_extremes_per_coordinate():
    # 5 clients, trim 0.2 -> drop 1 smallest and 1 largest per coordinate
    updates = vecs([0.0, 5.0], [1.0, -100.0], [2.0, 6.0], [3.0, 7.0], [90.0, 8.0])

    out = trimmed_mean(updates, trim_ratio=0.2)

    # coord 0: (1 + 2 + 3) / 3 = 2 ; coord 1: (5 + 6 + 7) / 3 = 6
    assert out.tolist() == pytest.approx([2.0, 6.0])


def test_trimmed_mean_with_zero_ratio_is_the_plain_mean():
    assert trimmed_mean(vecs([1.0], [2.0], [6.0]), trim_ratio=0.0).tolist() == [3.0]


def test_trimmed_mean_rejects_half_or_more():
    with pytest.raises(ValueError, match="trim_ratio"):
        trimmed_mean(vecs([1.0]), trim_ratio=0.5)


def test_krum_picks_the_update_closest_to_its_neighbours():
    # n=5, f=1 -> each score sums the 2 nearest squared distances
    updates = vecs([0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [10.0, 10.0])

    out = krum(updates, f=1)

    # scores: [0,0]: 1+1=2, [1,0]: 1+1=2, [0,1]: 2, [1,1]: 2, outlier: 162+181; ties -> first
    assert out.tolist() == [0.0, 0.0]


def test_multi_krum_averages_the_m_best():
    updates = vecs([0.0], [1.0], [3.0], [100.0])

    out = krum(updates, [1, 1, 1, 1], f=0, m=2)

    # scores (2 nearest): 0: 1+9=10, 1: 1+4=5, 3: 4+9=13, 100: big -> best two are 1 and 0
    assert out.tolist() == [0.5]


def test_krum_needs_more_than_2f_plus_2_clients():
    with pytest.raises(ValueError, match="clients > 2"):
        krum(vecs([0.0], [1.0], [2.0], [3.0]), f=1)


def test_aggregator_table_passes_each_rule_its_options():
    updates = torch.tensor([[0.0], [1.0], [2.0], [100.0]])
    counts = np.array([1, 1, 1, 1])
    options = AggregatorOptions(trim_ratio=0.25, krum_f=0)

    out = {name: rule(updates, counts, options).tolist() for name, rule in AGGREGATORS.items()}

    # mean 103 / 4; median of 1 and 2; trimmed: drop 0 and 100; krum: 1 is nearest to 0, 2;
    # bulyan with f=0 keeps all four; clipping to norm 1 (around 0) leaves 0, 1, 1, 1
    assert out == {"mean": [25.75], "median": [1.5], "trimmed-mean": [1.5], "krum": [1.0],
                   "bulyan": [25.75], "centered-clip": [0.75], "norm-bound": [0.75]}  # fmt: skip


def test_needed_updates_is_more_than_2f_plus_2_for_krum_and_4f_plus_3_for_bulyan():
    options = AggregatorOptions(krum_f=2)

    assert [needed_updates(name, options) for name in AGGREGATORS] == [1, 1, 1, 7, 11, 1, 1]


def test_unknown_aggregator_names_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown aggregator 'mode' .*mean, median"):
        get_aggregator("mode")


def random_round(clients=50, size=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    updates = torch.randn(clients, size, generator=gen)
    counts = torch.randint(1, 100, (clients,), generator=gen).numpy()
    return updates, counts


def fed_in_chunks(aggregation, updates, counts, chunk):
    for lo in range(0, len(updates), chunk):
        aggregation.add(updates[lo : lo + chunk], counts[lo : lo + chunk])
    return aggregation.result()


def test_streaming_mean_by_hand():
    mean = StreamingMean()
    mean.add(vecs([1.0, 0.0]), [3])
    mean.add(vecs([4.0, 8.0]), [1])

    # the same numbers as the one-shot case above: (3 * 1 + 4) / 4, (0 + 8) / 4
    assert mean.result().tolist() == [1.75, 2.0]


def test_streaming_mean_of_one_chunk_is_the_one_shot_mean_bit_for_bit():
    updates, counts = random_round()

    streamed = fed_in_chunks(StreamingMean(), updates, counts, chunk=50)

    assert torch.equal(streamed, weighted_mean(updates, counts))


@pytest.mark.parametrize("chunk", [1, 7, 49])
def test_streaming_mean_in_chunks_equals_the_one_shot_mean_up_to_rounding(chunk):
    updates, counts = random_round()

    streamed = fed_in_chunks(StreamingMean(), updates, counts, chunk)

    assert streamed.dtype == torch.float32 and streamed.shape == (7,)
    assert torch.allclose(streamed, weighted_mean(updates, counts), rtol=1e-6, atol=1e-7)


def test_streaming_mean_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="at least one client update"):
        StreamingMean().result()


@pytest.mark.parametrize("name", ["median", "trimmed-mean", "krum"])
def test_rules_that_need_every_update_collect_the_chunks(name):
    updates, counts = random_round()
    options = AggregatorOptions(trim_ratio=0.2, krum_f=3, krum_m=4)

    streamed = fed_in_chunks(start_aggregation(name, options), updates, counts, chunk=7)

    assert isinstance(start_aggregation(name, options), Collected)
    assert torch.equal(streamed, AGGREGATORS[name](updates, counts, options))


def test_the_mean_and_the_rules_on_deltas_stream():
    options = AggregatorOptions()
    kinds = {name: type(start_aggregation(name, options)).__name__ for name in AGGREGATORS}

    assert kinds == {"mean": "StreamingMean", "median": "Collected", "trimmed-mean": "Collected",
                     "krum": "Collected", "bulyan": "Collected",
                     "centered-clip": "CenteredClipping", "norm-bound": "NormBounding"}  # fmt: skip
