"""Attacks on a federated run: who attacks, the poisoned data, the rows at the update seam."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distlab.config import validate_config
from distlab.data.datasets import Dataset
from distlab.data.poison import PATCH, backdoor_rows, poison, trigger_value, triggered
from distlab.federated.attacks import (
    AttackTransform,
    attacked_partition,
    check_attack,
    run_attackers,
)
from distlab.federated.types import Updates
from distlab.transforms.attacks import AttackSettings, draw_attackers


def tiny_images(n=40, classes=10) -> Dataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=gen) * 2 - 1
    y = torch.arange(n) % classes
    return Dataset("tiny", x, y, x[:10].clone(), y[:10].clone(), classes)


def fed(attack: dict, clients=10, **strategy):
    return validate_config(
        {"strategy": {"name": "fedavg", "clients": clients, **strategy}, "attack": attack}
    )


def test_attackers_are_drawn_once_from_the_attack_seed_else_the_run_seed():
    cfg = fed({"kind": "sign-flip", "fraction": 0.3})
    first = run_attackers(cfg)
    assert len(first) == 3 and np.array_equal(first, run_attackers(cfg))
    assert np.array_equal(first, draw_attackers(10, 0.3, cfg.seed))
    seeded = fed({"kind": "sign-flip", "fraction": 0.3, "seed": 5})
    assert np.array_equal(run_attackers(seeded), draw_attackers(10, 0.3, 5))
    assert len(run_attackers(fed({"kind": "none"}))) == 0


def test_the_partition_names_the_attackers_only_when_an_attack_is_on():
    labels = np.arange(100) % 10
    on = attacked_partition(fed({"kind": "label-flip", "fraction": 0.2}), labels)
    assert on.attackers == run_attackers(fed({"kind": "label-flip", "fraction": 0.2})).tolist()
    assert attacked_partition(fed({"kind": "none"}), labels).attackers is None


def test_label_flipping_relabels_every_sample_of_the_attackers_and_nothing_else():
    data = tiny_images()
    train = [np.arange(i * 10, i * 10 + 10) for i in range(4)]
    out = poison(data, "label-flip", train, np.array([1, 3]))
    flipped = np.concatenate([train[1], train[3]])
    assert torch.equal(out.y_train[flipped], 9 - data.y_train[flipped])
    kept = np.concatenate([train[0], train[2]])
    assert torch.equal(out.y_train[kept], data.y_train[kept])
    assert torch.equal(out.x_train, data.x_train) and torch.equal(out.y_test, data.y_test)
    assert not torch.equal(data.y_train[flipped], out.y_train[flipped])  # the input is kept


def test_the_backdoor_stamps_a_white_square_on_a_fraction_of_the_attackers_samples():
    data = tiny_images()
    train = [np.arange(i * 10, i * 10 + 10) for i in range(4)]
    out = poison(data, "backdoor", train, np.array([2]), target=7, fraction=0.5, seed=3)
    rows = backdoor_rows(train[2], 0.5, 3, 2)
    assert len(rows) == 5 and set(rows) <= set(train[2])
    white = trigger_value(data.x_train)
    assert torch.all(out.x_train[rows, :, -PATCH:, -PATCH:] == white)
    assert torch.all(out.y_train[rows] == 7)
    others = np.setdiff1d(np.arange(40), rows)
    assert torch.equal(out.x_train[others], data.x_train[others])
    assert torch.equal(out.y_train[others], data.y_train[others])
    # the same seed poisons the same samples on every rank
    again = poison(data, "backdoor", train, np.array([2]), target=7, fraction=0.5, seed=3)
    assert torch.equal(again.x_train, out.x_train)


def test_triggered_stamps_the_last_features_of_vectors_and_leaves_its_input():
    x = torch.zeros(3, 10)
    stamped = triggered(x, 2.5)
    assert torch.all(stamped[:, -PATCH:] == 2.5) and torch.all(stamped[:, :-PATCH] == 0)
    assert torch.all(x == 0)


def updates_of(clients, rows) -> Updates:
    n = len(clients)
    return Updates(np.array(clients), rows, np.full(n, 10), {"loss": np.zeros(n)})


def test_sign_flip_reverses_the_attackers_deltas_from_the_start_round_and_records_them():
    start = torch.ones(4)
    rows = start + torch.arange(12.0).reshape(3, 4)
    transform = AttackTransform(np.array([1, 5]), AttackSettings("sign-flip", 2.0), 3, 0)
    transform.aggregation(None)
    before = transform.updates(2, start, updates_of([0, 1, 2], rows.clone()))
    assert torch.equal(before.params, rows)
    assert transform.fields(2) == {"attackers": []}
    transform.aggregation(None)
    after = transform.updates(3, start, updates_of([0, 1, 2], rows.clone()))
    assert torch.equal(after.params[1], start - 2.0 * (rows[1] - start))
    assert torch.equal(after.params[[0, 2]], rows[[0, 2]])
    assert transform.fields(3) == {"attackers": [1]}


def test_a_lost_reply_stays_nan_and_alie_reads_only_the_honest_rows_that_came():
    start = torch.zeros(2)
    rows = torch.tensor([[1.0, 2.0], [float("nan"), float("nan")], [3.0, 4.0], [5.0, 0.0]])
    transform = AttackTransform(np.array([3]), AttackSettings("alie", z=1.0), 1, 0)
    out = transform.updates(1, start, updates_of([0, 1, 2, 3], rows.clone())).params
    assert torch.isnan(out[1]).all()
    honest = rows[[0, 2]]
    expected = honest.mean(0) - honest.std(0, correction=0)
    assert torch.allclose(out[3], expected)


def test_a_data_attack_changes_no_row_but_records_its_attackers():
    transform = AttackTransform(np.array([0]), None, 1, 0)
    rows = torch.randn(2, 3)
    out = transform.updates(1, torch.zeros(3), updates_of([0, 1], rows.clone()))
    assert torch.equal(out.params, rows) and transform.fields(1) == {"attackers": [0]}


@pytest.mark.parametrize(
    ("attack", "executor", "message"),
    [
        ({"kind": "sign-flip", "fraction": 0.04}, "vectorized", "smallest fraction is 0.1"),
        ({"kind": "label-flip"}, "flower", "data attacks run on executors vectorized"),
        ({"kind": "backdoor", "start": 2}, "vectorized", "attack.start must be 1"),
    ],
)
def test_check_attack_refuses(attack, executor, message):
    with pytest.raises(ValueError, match=message):
        check_attack(fed(attack), executor)


def test_check_attack_passes_a_model_attack_on_any_executor():
    check_attack(fed({"kind": "gaussian", "fraction": 0.1}), "flower")
    check_attack(fed({"kind": "none", "fraction": 0.0}), "serial")
