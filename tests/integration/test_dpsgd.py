"""DP-SGD: Opacus on centralized (its accountant's epsilon on every step), clipped sums
all-reduced with one noise draw on allreduce, and client-level DP-SGD in fedavg's local
training (the vectorized executor equals the sequential one); bad input in one line."""

from __future__ import annotations

import pytest
import torch
from opacus.accountants import RDPAccountant
from tests.conftest import final_state, run_small

from distlab.dpsgd import refuse_batch_norm

DP = {"mode": "dpsgd", "noise": 1.0, "clip": 1.0}
MNIST = {"dataset": "mnist-sample", "model": "logreg", "epochs": 2, "batch_size": 64}


def kind(result, name: str) -> list[dict]:
    return [e for e in result.events if e["kind"] == name and e.get("rank", 0) == 0]


def fresh_epsilon(noise: float, rate: float, steps: int, delta: float) -> float:
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=noise, sample_rate=rate)
    return accountant.get_epsilon(delta=delta)


def assert_private_run(result) -> None:
    """Every step carries epsilon; the last one is a fresh accountant's at the run's q, z."""
    (phase,) = [e for e in kind(result, "phase") if e.get("phase") == "privacy"]
    assert phase["sampling"] == "poisson" and phase["noise"] == 1.0 and phase["clip"] == 1.0
    steps = kind(result, "step")
    assert all(s["epsilon"] is not None for s in steps)
    assert [s["epsilon"] for s in steps] == sorted(s["epsilon"] for s in steps)
    expected = fresh_epsilon(1.0, phase["sample_rate"], len(steps), phase["delta"])
    assert steps[-1]["epsilon"] == pytest.approx(expected, rel=1e-6)
    assert result.summary["epsilon"] == pytest.approx(expected, rel=1e-6)
    assert result.summary["final_accuracy"] > 0.5  # ten classes: chance is 0.1


def test_centralized_dpsgd_epsilon_is_opacus_accountants(tmp_path):
    result = run_small(tmp_path, strategy="centralized", optimizer={"lr": 0.5}, privacy=DP, **MNIST)
    (phase,) = [e for e in kind(result, "phase") if e.get("phase") == "privacy"]
    assert phase["sample_rate"] == pytest.approx(1 / 63)  # 1 / ceil(4000 training / 64)
    assert_private_run(result)
    # Poisson batches: their sizes vary around the expected 64
    sizes = [s["samples"] for s in kind(result, "step")]
    assert len(set(sizes)) > 5 and 55 < sum(sizes) / len(sizes) < 75


@pytest.mark.slow
def test_allreduce_dpsgd_two_workers(tmp_path):
    result = run_small(
        tmp_path, strategy="allreduce", workers=2, optimizer={"lr": 0.5}, privacy=DP, **MNIST
    )
    assert_private_run(result)


FED = {
    "dataset": "synthetic",
    "model": "mlp",
    "optimizer": {"lr": 0.1},
    "privacy": {"mode": "dpsgd", "noise": 0.8, "clip": 1.0},
}


def fedavg(tmp_path, executor: str):
    strategy = {"name": "fedavg", "clients": 8, "clients_per_round": 4, "rounds": 3}
    return run_small(tmp_path, strategy={**strategy, "executor": executor}, **FED)


def test_fedavg_local_dpsgd_vectorized_equals_sequential(tmp_path):
    vec, seq = fedavg(tmp_path / "v", "vectorized"), fedavg(tmp_path / "s", "sequential")
    a, b = final_state(vec), final_state(seq)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    rounds = kind(vec, "round")
    eps = [r["epsilon"] for r in rounds]
    assert eps == [r["epsilon"] for r in kind(seq, "round")]
    assert all(e is not None and e > 0 for e in eps) and eps == sorted(eps)
    assert vec.summary["epsilon"] == eps[-1]
    plain = run_small(
        tmp_path / "p",
        strategy={"name": "fedavg", "clients": 8, "clients_per_round": 4, "rounds": 3},
        **{k: v for k, v in FED.items() if k != "privacy"},
    )
    c = final_state(plain)
    assert not all(torch.allclose(a[k], c[k], atol=1e-3) for k in a)  # the noise is there


def test_bad_dpsgd_input_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="privacy.mode=dpsgd is not carried by strategy gossip"):
        run_small(tmp_path, strategy="gossip", workers=2, privacy=DP)
    with pytest.raises(ValueError, match="target_epsilon=1e-06 is out of reach"):
        run_small(
            tmp_path,
            strategy="centralized",
            privacy={**DP, "target_epsilon": 1e-6},
            **MNIST,
        )
    assert not (tmp_path / "runs").exists()
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="cannot train model bn-net: its BatchNorm1d"):
        refuse_batch_norm(model, "bn-net")
