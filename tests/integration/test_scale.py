"""A federation of 10,000 clients works out of the box on the generated image set."""

from __future__ import annotations

import torch
from tests.conftest import cli

from distlab.data.datasets import make_synthetic_images


def test_synthetic_images_are_seeded_mnist_shaped_and_class_conditional():
    small = make_synthetic_images(train=500, test=100)
    again = make_synthetic_images(train=500, test=100)
    assert small.x_train.shape == (500, 1, 28, 28) and small.classes == 10
    assert torch.equal(small.x_train, again.x_train) and torch.equal(small.y_test, again.y_test)
    means = torch.stack([small.x_train[small.y_train == c].mean(0) for c in range(10)])
    # Each class has its own pattern: class means differ far more than noise would allow.
    gaps = torch.cdist(means.flatten(1), means.flatten(1))
    assert gaps[~torch.eye(10, dtype=torch.bool)].min() > 1.0


def test_ten_thousand_clients(tmp_path):
    done = cli("run", "--strategy", "fedavg", "--dataset", "synthetic-images", "--model",
               "logreg", "--clients", "10000", "--rounds", "2", "--set",
               "strategy.clients_per_round=50", "--out-dir", str(tmp_path), "--json",
               timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"status": "completed"' in done.stdout
