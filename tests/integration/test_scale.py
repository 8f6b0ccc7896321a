"""A federation of 10,000 clients works out of the box on the generated image set, and a
round trained and aggregated in chunks is the round in one chunk, up to float rounding."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import cli

from distlab.api import run
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


def chunked_run(tmp_path, name, chunk):
    strategy = {"name": "fedavg", "executor": "vectorized", "clients": 12, "rounds": 3,
                "clients_per_round": 9, "client_failure_rate": 0.3, "min_clients": 6,
                "aggregate_chunk": chunk}  # fmt: skip
    return run({"dataset": "synthetic", "model": "logreg", "strategy": strategy,
                "out_dir": str(tmp_path), "name": name})  # fmt: skip


def test_a_round_in_chunks_is_the_round_in_one_chunk_up_to_rounding(tmp_path):
    whole = chunked_run(tmp_path, "whole", 1000)
    chunked = chunked_run(tmp_path, "chunked", 4)

    keys = ("clients", "failed", "rejected", "attempts", "samples", "retried_failed")
    rounds = [[e for e in r.events if e["kind"] == "round"] for r in (whole, chunked)]
    assert chunked.summary["status"] == "completed" and len(rounds[1]) == 3
    assert [[e.get(k) for k in keys] for e in rounds[1]] == [
        [e.get(k) for k in keys] for e in rounds[0]
    ]
    assert any(e["attempts"] > 1 or e["failed"] for e in rounds[1])
    assert [e["loss"] for e in rounds[1]] == pytest.approx([e["loss"] for e in rounds[0]])
    models = [torch.load(r.run_dir / "model.pt", weights_only=True) for r in (whole, chunked)]
    assert all(torch.allclose(models[0][k], models[1][k], atol=1e-5) for k in models[0])
