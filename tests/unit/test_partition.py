"""Partition schemes, heterogeneity metrics and partition plots/tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from distlab.config import describe_error
from distlab.data.partition import (
    ClassesPartition,
    DirichletPartition,
    IidPartition,
    Partition,
    QuantityPartition,
    ShardsPartition,
    make_scheme,
    partition,
    partition_metrics,
)
from distlab.experiments.report import partition_table_rows
from distlab.plots import plot_partition
from distlab.runs.directory import write_partition_record

FAST = settings(max_examples=50, deadline=None)


@st.composite
def labelled(draw, max_samples: int = 60, max_classes: int = 6):
    """(labels, clients, seed) with 1 <= clients <= samples."""
    classes = draw(st.integers(1, max_classes))
    labels = draw(st.lists(st.integers(0, classes - 1), min_size=1, max_size=max_samples))
    clients = draw(st.integers(1, min(len(labels), 8)))
    return np.array(labels), clients, draw(st.integers(0, 2**32 - 1))


def assert_valid(p: Partition, labels: np.ndarray, clients: int) -> None:
    """Disjoint, covering, and counts that match the labels."""
    assert len(p.indices) == clients
    joined = np.sort(np.concatenate(p.indices))
    np.testing.assert_array_equal(joined, np.arange(len(labels)))
    expected = [np.bincount(labels[i], minlength=labels.max() + 1) for i in p.indices]
    np.testing.assert_array_equal(p.counts, np.stack(expected))


def assert_same(a: Partition, b: Partition) -> None:
    for x, y in zip(a.indices, b.indices, strict=True):
        np.testing.assert_array_equal(x, y)


# --- schemes: properties -------------------------------------------------------------------


@FAST
@given(labelled())
def test_iid_covers_and_sizes_differ_by_at_most_one(case):
    labels, clients, seed = case

    p = partition(labels, clients, IidPartition(), seed)

    assert_valid(p, labels, clients)
    assert max(p.sizes) - min(p.sizes) <= 1
    assert_same(p, partition(labels, clients, IidPartition(), seed))


@FAST
@given(labelled(), st.floats(0.01, 100), st.booleans())
@example((np.array([0, 1, 2, 3]), 3, 74), 38.0, True)  # shares summing to 1 - 1e-16
def test_dirichlet_covers_and_balance_caps_sizes(case, alpha, balance):
    labels, clients, seed = case
    config = DirichletPartition(alpha=alpha, min_size=0, balance=balance)

    p = partition(labels, clients, config, seed)

    assert_valid(p, labels, clients)
    assert_same(p, partition(labels, clients, config, seed))
    if balance:
        # A client stops receiving once it holds >= N/K, so it overshoots by < one class.
        assert max(p.sizes) < len(labels) / clients + np.bincount(labels).max()


@FAST
@given(labelled(), st.integers(0, 10))
def test_dirichlet_min_size_is_met_or_refused(case, min_size):
    labels, clients, seed = case
    config = DirichletPartition(alpha=1.0, min_size=min_size, max_retries=5)

    try:
        p = partition(labels, clients, config, seed)
    except ValueError as exc:
        assert "lower min_size" in str(exc)
        return

    assert_valid(p, labels, clients)
    assert min(p.sizes) >= min_size


@FAST
@given(labelled(), st.integers(1, 4))
def test_shards_deal_whole_shards(case, per_client):
    labels, clients, seed = case
    shards = clients * per_client
    if shards > len(labels):
        with pytest.raises(ValueError, match="shards exceeds"):
            partition(labels, clients, ShardsPartition(shards_per_client=per_client), seed)
        return

    p = partition(labels, clients, ShardsPartition(shards_per_client=per_client), seed)

    assert_valid(p, labels, clients)
    # The first N mod S shards hold one more sample, so sizes lie between these bounds.
    small = len(labels) // shards
    assert all(small * per_client <= s <= (small + 1) * per_client for s in p.sizes)


@FAST
@given(st.integers(1, 40), st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_shards_each_client_holds_exactly_its_shards(extra, clients, per_client, seed):
    # Distinct labels make the sorted order unique: sample i sits at position labels[i].
    n = clients * per_client + extra
    labels = np.random.default_rng(seed).permutation(n)
    shard_at = np.repeat(np.arange(clients * per_client), [len(c) for c in np.array_split(
        np.arange(n), clients * per_client)])  # fmt: skip

    p = partition(labels, clients, ShardsPartition(shards_per_client=per_client), seed)

    held = [set(shard_at[labels[idx]]) for idx in p.indices]
    assert all(len(h) == per_client for h in held)
    assert len(set().union(*held)) == clients * per_client


@st.composite
def class_case(draw):
    """Labels with every class holding >= clients samples, and a feasible k."""
    classes = draw(st.integers(1, 6))
    clients = draw(st.integers(1, 6))
    per_class = draw(st.lists(st.integers(clients, clients + 6), min_size=classes,
                              max_size=classes))  # fmt: skip
    labels = np.repeat(np.arange(classes), per_class)
    k = draw(st.integers(-(-classes // clients), classes))
    return labels, clients, k, draw(st.integers(0, 2**32 - 1))


@FAST
@given(class_case())
def test_classes_gives_exactly_k_classes_split_evenly(case):
    labels, clients, k, seed = case
    config = ClassesPartition(classes_per_client=k)

    p = partition(labels, clients, config, seed)

    assert_valid(p, labels, clients)
    assert ((p.counts > 0).sum(axis=1) == k).all()
    for column in p.counts.T:
        held = column[column > 0]
        assert held.max() - held.min() <= 1
    assert_same(p, partition(labels, clients, config, seed))


@FAST
@given(labelled(), st.floats(0.05, 50), st.integers(0, 10))
def test_quantity_covers_with_min_size(case, alpha, min_size):
    labels, clients, seed = case
    min_size = min(min_size, len(labels) // clients)
    config = QuantityPartition(alpha=alpha, min_size=min_size)

    p = partition(labels, clients, config, seed)

    assert_valid(p, labels, clients)
    assert min(p.sizes) >= min_size
    assert_same(p, partition(labels, clients, config, seed))


def test_seed_changes_the_partition():
    labels = np.repeat(np.arange(4), 25)

    a = partition(labels, 4, DirichletPartition(alpha=0.5, min_size=0), seed=0)
    b = partition(labels, 4, DirichletPartition(alpha=0.5, min_size=0), seed=1)

    assert not np.array_equal(a.counts, b.counts)


# --- schemes: hand-worked examples ---------------------------------------------------------


def test_shards_one_per_client_gives_each_client_one_class():
    labels = np.array([1, 0, 1, 0, 1, 0])

    p = partition(labels, 2, ShardsPartition(shards_per_client=1), seed=3)

    assert sorted(p.counts.tolist()) == [[0, 3], [3, 0]]


def test_classes_one_each_over_as_many_clients_as_classes():
    labels = np.array([0, 0, 1, 1, 2, 2])

    p = partition(labels, 3, ClassesPartition(classes_per_client=1), seed=5)

    assert sorted(p.counts.tolist()) == [[0, 0, 2], [0, 2, 0], [2, 0, 0]]


def test_quantity_min_size_equal_to_share_gives_equal_sizes():
    labels = np.arange(12) % 3

    p = partition(labels, 4, QuantityPartition(alpha=0.1, min_size=3), seed=0)

    assert p.sizes == [3, 3, 3, 3]


# --- errors --------------------------------------------------------------------------------


SIX = [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize(
    ("labels", "clients", "config", "message"),
    [
        (SIX, 0, IidPartition(), r"clients must be >= 1 \(got 0\)"),
        (SIX, 7, IidPartition(), r"clients \(7\) must be <= samples \(6\)"),
        (SIX, 3, DirichletPartition(min_size=3), "min_size 3 x 3 clients = 9 exceeds the 6 "),
        (SIX, 2, QuantityPartition(min_size=4), "min_size 4 x 2 clients = 8 exceeds the 6 "),
        (SIX, 4, ShardsPartition(shards_per_client=2), "8 shards exceeds the 6 samples"),
        (SIX, 2, ClassesPartition(classes_per_client=3), r"classes_per_client must be in \[1, 2\]"),
        ([0, 1, 1, 1, 1], 4, ClassesPartition(classes_per_client=1), "class 0 has 1 samples"),
    ],
)
def test_impossible_splits_raise_one_line(labels, clients, config, message):
    with pytest.raises(ValueError, match=message) as info:
        partition(labels, clients, config, seed=0)

    assert "\n" not in str(info.value)


def test_classes_refuses_to_leave_a_class_unheld():
    labels = np.repeat(np.arange(5), 4)

    with pytest.raises(ValueError, match="2 clients x 2 classes_per_client = 4 < 5 classes"):
        partition(labels, 2, ClassesPartition(classes_per_client=2), seed=0)


def test_dirichlet_gives_up_after_max_retries():
    labels = np.zeros(20, dtype=int)
    config = DirichletPartition(alpha=0.01, min_size=10, max_retries=3)

    with pytest.raises(ValueError) as info:
        partition(labels, 2, config, seed=0)

    assert str(info.value) == (
        "dirichlet split could not give every client >= 10 samples after 3 tries; "
        "lower min_size or raise alpha"
    )


def test_make_scheme_rejects_unknown_scheme_and_foreign_parameters():
    with pytest.raises(ValueError, match=r"unknown scheme 'zipf' \(allowed: iid, dirichlet"):
        make_scheme("zipf")
    with pytest.raises(ValueError, match=r"alpha does not apply to scheme 'shards' \(allowed: "
                       r"shards_per_client\)"):  # fmt: skip
        make_scheme("shards", alpha=0.5)


def test_make_scheme_keeps_defaults_for_missing_values():
    config = make_scheme("dirichlet", alpha=0.1, min_size=None, balance=False)

    assert config == DirichletPartition(alpha=0.1, balance=False)


def test_alpha_zero_is_a_one_line_validation_error():
    with pytest.raises(ValidationError) as info:
        make_scheme("dirichlet", alpha=0)

    message = describe_error(info.value)
    assert message.startswith("alpha ") and message.endswith("(got 0)")
    assert "\n" not in message


# --- metrics -------------------------------------------------------------------------------


def metrics_of(counts: list[list[int]]) -> dict:
    counts = np.array(counts)
    return partition_metrics(Partition([np.zeros(n, int) for n in counts.sum(1)], counts))


def test_two_clients_with_one_class_each_have_tv_half():
    m = metrics_of([[2, 0], [0, 2]])

    assert m["tv_distance"] == pytest.approx(0.5)
    assert m["classes_per_client"] == [1, 1]
    assert (m["size_min"], m["size_median"], m["size_max"]) == (2, 2.0, 2)


def test_same_mix_everywhere_has_tv_zero():
    m = metrics_of([[1, 1], [2, 2], [3, 3]])

    assert m["tv_distance"] == pytest.approx(0.0)
    assert (m["size_min"], m["size_median"], m["size_max"]) == (2, 4.0, 6)


def test_tv_of_unequal_clients():
    # global mix (5/6, 1/6): client 0 (1, 0) is 1/6 away, client 1 (1/2, 1/2) is 1/3 away.
    m = metrics_of([[4, 0], [1, 1]])

    assert m["tv_distance"] == pytest.approx(0.25)


def test_empty_clients_are_left_out_of_the_mean_tv():
    m = metrics_of([[2, 0], [0, 2], [0, 0]])

    assert m["tv_distance"] == pytest.approx(0.5)
    assert m["classes_per_client"] == [1, 1, 0]
    assert m["size_min"] == 0


@pytest.fixture(scope="module")
def mnist_labels():
    from distlab.data.datasets import load_dataset

    return load_dataset("mnist-sample").y_train


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dirichlet_tv_grows_as_alpha_shrinks_on_mnist_sample(mnist_labels, seed):
    tv = [
        partition_metrics(partition(mnist_labels, 10, DirichletPartition(alpha=a), seed))
        for a in (100.0, 1.0, 0.1)
    ]

    assert tv[0]["tv_distance"] < tv[1]["tv_distance"] < tv[2]["tv_distance"]


def test_quantity_sizes_spread_more_for_small_alpha(mnist_labels):
    spread = [
        np.std(partition(mnist_labels, 10, QuantityPartition(alpha=a), seed=0).sizes)
        for a in (100.0, 0.1)
    ]

    assert spread[0] < spread[1]


# --- tables and plots ----------------------------------------------------------------------


def test_table_rows_list_size_classes_and_top_classes():
    p = Partition([np.zeros(160, int), np.zeros(5, int)], np.array([[0, 120, 0, 40], [5, 0, 0, 0]]))

    rows = partition_table_rows(p)

    assert rows == [
        {"client": 0, "size": 160, "classes": 2, "top": "1:120 3:40"},
        {"client": 1, "size": 5, "classes": 1, "top": "0:5"},
    ]


@pytest.mark.parametrize(("name", "kind", "head"), [
    ("p.png", "bar", b"\x89PNG\r\n\x1a\n"), ("p.svg", "heatmap", b"<?xml"),
])  # fmt: skip
def test_plot_partition_writes_the_format_of_the_extension(tmp_path, name, kind, head):
    counts = np.arange(12).reshape(4, 3)

    path = plot_partition(counts, tmp_path / name, kind=kind, title="t")

    assert path.read_bytes().startswith(head)


def test_plot_partition_draws_a_hundred_clients(tmp_path):
    counts = np.random.default_rng(0).integers(0, 30, size=(100, 10))

    path = plot_partition(counts, tmp_path / "many.png")

    assert path.stat().st_size > 1000


@pytest.mark.parametrize(("name", "kind", "message"), [
    ("p.jpg", "bar", r"plot file must end in \.png, \.svg \(got 'p\.jpg'\)"),
    ("p.png", "pie", r"plot kind must be one of bar, heatmap \(got 'pie'\)"),
])  # fmt: skip
def test_plot_partition_rejects_other_formats_and_kinds(tmp_path, name, kind, message):
    with pytest.raises(ValueError, match=message):
        plot_partition(np.ones((2, 2), int), tmp_path / name, kind=kind)
    assert not (tmp_path / name).exists()


def test_write_partition_record(tmp_path):
    labels = np.repeat(np.arange(3), 4)
    p = partition(labels, 3, ShardsPartition(shards_per_client=1), seed=0)

    write_partition_record(tmp_path, p)

    record = json.loads((tmp_path / "partition.json").read_text())
    assert record["scheme"] == "shards"
    assert record["params"] == {"shards_per_client": 1}
    assert record["sizes"] == [4, 4, 4]
    assert sorted(record["counts"]) == [[0, 0, 4], [0, 4, 0], [4, 0, 0]]
    assert record["metrics"]["classes_per_client"] == [1, 1, 1]
    assert (tmp_path / "partition.png").read_bytes().startswith(b"\x89PNG")


def test_record_of_a_partition_built_without_a_scheme(tmp_path):
    p = Partition([np.array([0, 2]), np.array([1])], np.array([[2, 0], [0, 1]]))

    write_partition_record(tmp_path, p)

    record = json.loads((tmp_path / "partition.json").read_text())
    assert (record["scheme"], record["params"], record["sizes"]) == ("custom", {}, [2, 1])
    # global mix (2/3, 1/3): client 0 is 1/3 away, client 1 is 2/3 away.
    assert record["metrics"]["tv_distance"] == pytest.approx(0.5)


def test_a_data_parallel_split_is_titled_by_its_workers_and_sampler(tmp_path):
    from distlab.config import RunConfig
    from distlab.runs.directory import partition_title
    from distlab.strategies.spec import sampler_partition

    labels = np.repeat(np.arange(4), 8)
    cfg = RunConfig(workers=2, sampler="random", batch_size=4, dataset="synthetic")
    split = sampler_partition(cfg, labels)
    scheme = partition(labels, 3, ShardsPartition(shards_per_client=1), seed=0)

    write_partition_record(tmp_path, Partition(split.indices, split.counts, holder="worker",
                                               source=split.source))  # fmt: skip

    record = json.loads((tmp_path / "partition.json").read_text())
    assert (record["holder"], record["source"]) == ("worker", "the random sampler's first epoch")
    assert partition_title(record) == "2 workers: the random sampler's first epoch"
    assert partition_title(
        {**json.loads(json.dumps(record)), "source": None, "holder": "client", "scheme": "shards",
         "counts": scheme.counts.tolist()}
    ).startswith("shards partition over 3 clients, TV distance ")  # fmt: skip
