"""Attacks on FedAvg end to end: sign-flip against the mean and the robust rules, a pixel
backdoor against the mean and norm bounding, and data poisoning that every executor's
clients see alike. Logistic regression on mnist-sample, 20 clients, 10 rounds."""

from __future__ import annotations

import json

import pytest
import torch

from distlab.api import run
from distlab.runs.directory import RunPaths

pytestmark = pytest.mark.slow

FED = {"name": "fedavg", "clients": 20, "rounds": 10, "executor": "vectorized"}
BASE = {
    "dataset": "mnist-sample",
    "model": "logreg",
    "seed": 1,
    "batch_size": 32,
    "optimizer": {"lr": 0.1},
    "eval_every": 10,
}
# 20% of 20 clients: 4 attackers, all of them in every round; Krum is told f = 4.
RULES = {
    "mean": {},
    "median": {},
    "trimmed-mean": {"trim_ratio": 0.2},
    "krum": {"krum_f": 4},
}
SIGN_FLIP = {"kind": "sign-flip", "fraction": 0.2, "scale": 5.0}
BACKDOOR = {"kind": "backdoor", "fraction": 0.2, "target": 0, "poison": 0.5}


def fedavg(out, name, attack=None, **strategy):
    cfg = {**BASE, "strategy": {**FED, **strategy}, "out_dir": str(out), "name": name}
    if attack is not None:
        cfg["attack"] = attack
    return run(cfg)


def accuracy(result) -> float:
    return result.summary["final_accuracy"]


@pytest.fixture(scope="module")
def sign_flip(tmp_path_factory):
    """rule -> (clean run, sign-flip run)."""
    out = tmp_path_factory.mktemp("sign-flip")
    return {
        rule: (
            fedavg(out, f"clean-{rule}", aggregator=rule, **extra),
            fedavg(out, f"flip-{rule}", SIGN_FLIP, aggregator=rule, **extra),
        )
        for rule, extra in RULES.items()
    }


def test_sign_flip_collapses_the_mean(sign_flip):
    clean, attacked = sign_flip["mean"]
    assert accuracy(clean) > 0.8
    assert accuracy(attacked) < accuracy(clean) - 0.5


@pytest.mark.parametrize("rule", ["median", "trimmed-mean", "krum"])
def test_robust_rules_stay_within_five_points_of_their_clean_run(sign_flip, rule):
    clean, attacked = sign_flip[rule]
    assert accuracy(attacked) >= accuracy(clean) - 0.05


def test_the_attackers_are_recorded_in_the_events_the_summary_and_the_partition(sign_flip):
    _, attacked = sign_flip["mean"]
    attackers = attacked.summary["attackers"]
    assert len(attackers) == 4 and attacked.summary["attack"] == "sign-flip"
    rounds = [e for e in attacked.events if e["kind"] == "round" and e.get("rank") == 0]
    assert len(rounds) == 10
    assert all(e["attackers"] == attackers for e in rounds)  # every client, every round
    record = json.loads(RunPaths(attacked.run_dir).partition_json.read_text())
    assert record["attackers"] == attackers
    clean_record = json.loads(RunPaths(sign_flip["mean"][0].run_dir).partition_json.read_text())
    assert "attackers" not in clean_record


def test_a_backdoor_succeeds_against_the_mean_and_less_under_norm_bounding(tmp_path):
    mean = fedavg(tmp_path, "mean", BACKDOOR)
    # a bound of 0.2 clips the deltas enough to matter (0.5 barely does: 0.86 success)
    bounded = fedavg(tmp_path, "bounded", BACKDOOR, aggregator="norm-bound", norm_bound=0.2)
    assert mean.summary["attack_success"] > 0.8
    assert accuracy(mean) > 0.8  # the main task is unharmed: the backdoor hides
    assert bounded.summary["attack_success"] < mean.summary["attack_success"] - 0.3
    assert accuracy(bounded) > 0.75
    evals = [e for e in mean.events if e["kind"] == "eval"]
    assert all(0 <= e["attack_success"] <= 1 for e in evals)


def test_process_hosts_poison_the_same_samples_as_one_process(tmp_path):
    """Label flipping on two client hosts and on the sequential executor (what each host
    runs) ends with the same model."""
    small = {"clients": 6, "rounds": 3}
    attack = {"kind": "label-flip", "fraction": 0.34}
    seq = fedavg(tmp_path, "sequential", attack, executor="sequential", **small)
    cfg = {**BASE, "strategy": {**FED, "executor": "processes", **small}, "attack": attack}
    procs = run({**cfg, "workers": 2, "out_dir": str(tmp_path), "name": "processes"})
    clean = fedavg(tmp_path, "clean", executor="sequential", **small)
    load = lambda r: torch.load(RunPaths(r.run_dir).model, weights_only=True)  # noqa: E731
    a, b, c = load(seq), load(procs), load(clean)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert any(not torch.allclose(a[k], c[k], atol=1e-3) for k in a)
    assert seq.summary["attackers"] == procs.summary["attackers"] and seq.summary["attackers"]
