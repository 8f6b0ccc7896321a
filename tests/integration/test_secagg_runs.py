"""FedAvg with SecAgg+ end to end: the masked run reaches the plain run's accuracy (the
difference is quantization and the uniform weights), dropped clients are unmasked with the
survivors' shares, and the round events carry the protocol's bytes and seconds."""

from __future__ import annotations

import pytest

from distlab.api import run

pytestmark = pytest.mark.slow


def fedavg(tmp_path, name: str, executor: str = "vectorized", secagg: dict | None = None):
    config = {
        "dataset": "mnist-sample",
        "model": "logreg",
        "batch_size": 32,
        "optimizer": {"lr": 0.1},
        "strategy": {
            "name": "fedavg",
            "clients": 20,
            "clients_per_round": 10,
            "rounds": 6,
            "executor": executor,
        },
        "eval_every": 6,
        "out_dir": str(tmp_path),
        "name": name,
    }
    if secagg is not None:
        config["secagg"] = {"enabled": True, **secagg}
    result = run(config)
    rounds = [e for e in result.events if e["kind"] == "round" and e["rank"] == 0]
    accuracy = [e for e in result.events if e["kind"] == "eval"][-1]["accuracy"]
    return accuracy, rounds


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return fedavg(tmp_path_factory.mktemp("plain"), "plain")


def test_secagg_reaches_the_plain_accuracy_and_records_its_cost(tmp_path, plain):
    accuracy, rounds = fedavg(tmp_path, "secagg", secagg={})

    assert abs(accuracy - plain[0]) <= 0.02, (accuracy, plain[0])
    assert all(r["secagg_bytes"] > 4 * 7850 for r in rounds)  # masked input and more
    assert all(r["secagg_seconds"] > 0 for r in rounds)
    assert "secagg_bytes" not in plain[1][0] or plain[1][0]["secagg_bytes"] is None


def test_dropped_clients_are_unmasked_and_the_run_still_learns(tmp_path, plain):
    accuracy, rounds = fedavg(
        tmp_path, "dropout", secagg={"dropout": 0.2, "neighbours": 4, "threshold": 2}
    )

    dropped = sum(len(r["failed"]) for r in rounds)
    assert dropped > 0
    assert all(r["updates"] + len(r["failed"]) == len(r["clients"]) == 10 for r in rounds)
    assert abs(accuracy - plain[0]) <= 0.03, (accuracy, plain[0])


def test_secagg_runs_at_the_seam_of_the_sequential_executor(tmp_path, plain):
    accuracy, rounds = fedavg(tmp_path, "sequential", "sequential", secagg={})

    assert abs(accuracy - plain[0]) <= 0.02, (accuracy, plain[0])
    assert all(r["secagg_bytes"] > 0 for r in rounds)
