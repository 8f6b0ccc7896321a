"""DP-FedAvg end to end: without noise or clipping it is FedAvg bit for bit, the epsilon it
records is Opacus's for the rounds it ran, a target epsilon picks its noise before the run,
and accuracy falls as epsilon falls."""

from __future__ import annotations

import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant

from distlab.accountant import noise_for
from distlab.api import run

pytestmark = pytest.mark.slow


def fedavg_run(out, name, privacy=None, dataset="mnist-sample", workers=1, **strategy):
    """FedAvg of logistic regression, 20 IID clients (equal shares), every round evaluated."""
    strategy = {"name": "fedavg", "clients": 20, "rounds": 4, "executor": "vectorized"} | strategy
    return run(
        {
            "dataset": dataset,
            "model": "logreg",
            "batch_size": 32,
            "optimizer": {"lr": 0.05},
            "workers": workers,
            "strategy": strategy,
            "privacy": privacy or {},
            "eval_every": 1,
            "out_dir": str(out),
            "name": name,
        }
    )


def kinds(result, kind):
    return [e for e in result.events if e["kind"] == kind]


def weights(result):
    return torch.load(result.run_dir / "model.pt", weights_only=True)


NO_NOISE = {"mode": "central", "noise": 0.0, "clip": None}


@pytest.mark.parametrize(
    ("executor", "workers"), [("vectorized", 1), ("processes", 2)], ids=["vectorized", "2-hosts"]
)
def test_without_noise_or_clipping_it_is_fedavg_bit_for_bit(tmp_path, executor, workers):
    plain = fedavg_run(tmp_path, "plain", executor=executor, workers=workers)
    private = fedavg_run(tmp_path, "dp", NO_NOISE, executor=executor, workers=workers)

    want, got = weights(plain), weights(private)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert [e["loss"] for e in kinds(private, "round")] == [
        e["loss"] for e in kinds(plain, "round")
    ]
    # no noise, no bound: epsilon is unknown (the recorder leaves out a null field)
    assert [e.get("epsilon") for e in kinds(private, "round")] == [None] * 4
    assert private.summary["privacy"] == "central"


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_round_epsilons_are_opacus_accountant_stepped_once_per_attempt(tmp_path, accountant):
    privacy = {"mode": "central", "noise": 1.2, "clip": 1.0, "accountant": accountant}
    # one client a round on average: some rounds draw none and are tried again
    result = fedavg_run(
        tmp_path, accountant, privacy, "synthetic", clients_per_round=1, max_retries=10
    )

    opacus = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    rounds = kinds(result, "round")
    for event in rounds:
        for _ in range(event["attempts"]):
            opacus.step(noise_multiplier=1.2, sample_rate=0.05)
        assert event["epsilon"] == pytest.approx(opacus.get_epsilon(delta=1e-5), rel=1e-6)
        assert event["clip"] == 1.0
    assert result.summary["epsilon"] == rounds[-1]["epsilon"]
    assert len({len(e["clients"]) for e in rounds}) > 1  # Poisson: the round sizes vary
    assert max(e["attempts"] for e in rounds) > 1
    phase = next(e for e in result.events if e.get("phase") == "privacy")
    assert phase["sampling"] == "poisson" and phase["sample_rate"] == 0.05
    assert phase["accountant"] == accountant and phase["noise"] == 1.2


def test_a_target_epsilon_picks_the_noise_before_the_run_and_is_kept(tmp_path):
    privacy = {"mode": "central", "target_epsilon": 3.0, "clip": 1.0, "noise": 99.0}
    result = fedavg_run(tmp_path, "target", privacy, "synthetic", clients_per_round=5)

    phase = next(e for e in result.events if e.get("phase") == "privacy")
    assert phase["noise"] == pytest.approx(noise_for(3.0, 1e-5, 0.25, 4))
    assert [e["attempts"] for e in kinds(result, "round")] == [1] * 4  # the steps it planned
    assert result.summary["epsilon"] <= 3.0
    assert result.summary["epsilon"] > 2.5  # the smallest noise that reaches it, not a larger


def test_adaptive_clipping_follows_the_update_norms(tmp_path):
    privacy = {"mode": "central", "noise": 0.5, "clip": 5.0, "adaptive": True, "clip_step": 0.5}
    result = fedavg_run(tmp_path, "adaptive", privacy, rounds=6)

    clips = [e["clip"] for e in kinds(result, "round")]
    assert clips[0] == 5.0
    # logistic regression's deltas are far below 5: most clients unclipped, the norm shrinks
    assert all(b < a for a, b in zip(clips, clips[1:], strict=False))


def test_accuracy_falls_as_epsilon_falls(tmp_path):
    runs = {
        z: fedavg_run(tmp_path, f"z{z}", {"mode": "central", "noise": z, "clip": 0.5}, rounds=5)
        for z in (0.5, 1.0, 2.0)
    }
    plain = fedavg_run(tmp_path, "plain", rounds=5)

    accuracy = [kinds(runs[z], "eval")[-1]["accuracy"] for z in (0.5, 1.0, 2.0)]
    epsilons = [runs[z].summary["epsilon"] for z in (0.5, 1.0, 2.0)]
    assert epsilons[0] > epsilons[1] > epsilons[2]
    assert kinds(plain, "eval")[-1]["accuracy"] > accuracy[0] > accuracy[1] > accuracy[2]
