"""Secure aggregation on a deployed run: Flower's SecAggPlusWorkflow among real SuperNodes
with secaggplus_mod reaches the plain run's model (up to quantization), and what Flower's
workflow cannot run is refused in one line before anything starts."""

from __future__ import annotations

import json

import pytest
import torch
from tests.conftest import cli

from distlab.api import run

ARGS = ("--clients", "3", "--strategy", "fedavg", "--rounds", "3", "--dataset", "mnist-sample",
        "--model", "logreg")  # fmt: skip


def events(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_deployed_run_through_flowers_secagg_plus_matches_the_plain_run(tmp_path):
    """The server sees only Flower's unmasked sum, yet the model is the plain run's (the
    plain deployed run equals the in-process one, test_deploy.py) up to quantization."""
    where = ("--out-dir", str(tmp_path / "DIR"), "--name", "S")
    done = cli("deploy", "local", *ARGS, *where, "--set", "secagg.enabled=true", "--json",
               cwd=tmp_path, timeout=400)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    run_dir = tmp_path / "DIR" / "S"
    plain = run({"dataset": "mnist-sample", "model": "logreg", "out_dir": str(tmp_path / "DIR"),
                 "name": "plain", "strategy": {"name": "fedavg", "clients": 3, "rounds": 3,
                                               "executor": "sequential"}})  # fmt: skip
    reference = json.loads((tmp_path / "DIR" / "plain" / "summary.json").read_text())
    assert plain is not None
    assert abs(summary["final_accuracy"] - reference["final_accuracy"]) <= 0.01
    secure = torch.load(run_dir / "model.pt", weights_only=True)
    clear = torch.load(tmp_path / "DIR" / "plain" / "model.pt", weights_only=True)
    gap = max((secure[k] - clear[k]).abs().max().item() for k in secure)
    assert 0 < gap < 1e-3  # masked and quantized, not the plain replies

    log = events(run_dir)
    rounds = [e for e in log if e["kind"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["clients"] == [0, 1, 2] and r["failed"] == [] for r in rounds)
    trained = [e for e in log if e["kind"] == "client" and e.get("status") == "trained"]
    assert len(trained) == 9 and all(e["samples"] > 0 for e in trained)
    # keys, encrypted shares and masked vectors cross the wire besides the model
    assert summary["bytes_per_round_measured"] > 1.5 * summary["bytes_per_round_logical"]


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        (("--clients", "2"), "needs more than 2"),
        (("--clients", "4", "--set", "secagg.threshold=4"), "secagg.threshold (4)"),
        (("--clients", "3", "--set", "attack.kind=sign-flip"), "attack.kind=sign-flip"),
    ],
)
def test_what_flowers_workflow_cannot_run_is_refused_in_one_line(tmp_path, settings, words):
    done = cli("run", "--strategy", "fedavg", *settings, "--set", "strategy.executor=flower",
               "--set", "secagg.enabled=true", "--out-dir", str(tmp_path / "DIR"),
               cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "executor flower" in lines[0], lines
    assert not (tmp_path / "DIR").exists()
