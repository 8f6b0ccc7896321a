"""Federated rounds on the simulated clock: a deadline that drops stragglers (Bonawitz et al.
2019) against FedProx partial work (Li et al. 2020), sim_seconds in the events, the round's
duration by its formula, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from tests.cli.test_run_errors import assert_one_line_error
from tests.conftest import cli

from distlab.api import run
from distlab.runtime.launch import RunFailed

ROUNDS = 8


def fedprox_run(out, name, **system):
    """20 clients of a non-IID mnist-sample on lognormal speeds, every client every round."""
    strategy = {
        "name": "fedavg",
        "clients": 20,
        "rounds": ROUNDS,
        "executor": "vectorized",
        "local_epochs": 2,
        "algorithm": "fedprox",
        "mu": 0.01,
    }
    return run(
        {
            "dataset": "mnist-sample",
            "model": "logreg",
            "batch_size": 32,
            "optimizer": {"lr": 0.05},
            "strategy": strategy,
            "partition": {"scheme": "dirichlet", "alpha": 0.1},
            "system": {"speed": "lognormal", "sigma": 1.0, **system},
            "eval_every": 4,
            "out_dir": str(out),
            "name": name,
        }
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("stragglers")
    # a client's 2 local epochs take about 0.5 s at speed 1: most are past 0.2 s
    return {
        mode: fedprox_run(out, mode, deadline=0.2, stragglers=mode) for mode in ("drop", "partial")
    }


def kinds(result, kind):
    return [e for e in result.events if e["kind"] == kind]


def test_drop_loses_the_stragglers_updates_and_partial_keeps_them(runs):
    dropped, partial = kinds(runs["drop"], "round"), kinds(runs["partial"], "round")

    assert all(e["stragglers"] for e in dropped)  # speeds are fixed: the slow are always late
    for e in dropped:
        assert e["updates"] == 20 - len(e["stragglers"])
        assert e["samples"] < sum(e2["samples"] for e2 in partial) / ROUNDS
    assert [e["stragglers"] for e in partial] == [e["stragglers"] for e in dropped]
    # partial: every straggler with a whole step in time sends what it trained
    assert sum(e["updates"] for e in partial) > sum(e["updates"] for e in dropped) + 5 * ROUNDS


def test_fedprox_partial_work_beats_dropping_stragglers_at_the_same_simulated_time(runs):
    """Li et al. 2020: the slow clients' data is never seen when their updates are dropped."""
    drop, partial = kinds(runs["drop"], "eval")[-1], kinds(runs["partial"], "eval")[-1]

    assert drop["sim_seconds"] == partial["sim_seconds"] == pytest.approx(0.2 * ROUNDS)
    assert partial["accuracy"] > drop["accuracy"] + 0.05


def test_every_round_and_eval_event_carries_a_monotone_sim_seconds(runs):
    for result in runs.values():
        rounds = kinds(result, "round")
        times = [e["sim_seconds"] for e in rounds]
        assert len(times) == ROUNDS and all(t > 0 for t in np.diff([0.0, *times]))
        # a round with stragglers lasts the deadline
        assert [e["sim_round_seconds"] for e in rounds] == [0.2] * ROUNDS
        by_round = {e["round"]: e["sim_seconds"] for e in rounds}
        assert all(e["sim_seconds"] == by_round[e["round"]] for e in kinds(result, "eval"))
        assert result.summary["sim_seconds"] == times[-1]


def test_with_equal_speeds_a_round_lasts_the_slowest_clients_formula(tmp_path):
    system = {"sample_seconds": 0.002, "bandwidth": 1e6}
    result = run(
        {
            "dataset": "synthetic",
            "model": "logreg",
            "strategy": {"name": "fedavg", "clients": 20, "clients_per_round": 5, "rounds": 3},
            "system": system,
            "out_dir": str(tmp_path),
            "name": "equal",
        }
    )
    params = result.summary["params"]

    # synthetic: 2000 samples over 20 iid clients, 100 each, one local epoch
    formula = 100 * 0.002 + 2 * 8 * 4 * params / 1e6
    rounds = kinds(result, "round")
    assert [e["sim_round_seconds"] for e in rounds] == pytest.approx([formula] * 3)
    assert [e["sim_seconds"] for e in rounds] == pytest.approx(formula * np.arange(1, 4))
    assert all("stragglers" in e and e["stragglers"] == [] for e in rounds)


def test_a_round_no_client_finishes_in_time_fails_with_one_line(tmp_path):
    with pytest.raises(RunFailed, match=r"fewer than 1 usable .* 3 \(past the deadline\)"):
        run(
            {
                "dataset": "synthetic",
                "model": "logreg",
                "strategy": {"name": "fedavg", "clients": 4, "rounds": 1, "max_retries": 1},
                "system": {"deadline": 0.001},
                "out_dir": str(tmp_path),
                "name": "late",
            }
        )


def test_the_command_refuses_partial_work_on_processes_and_writes_nothing(tmp_path):
    args = ["--strategy", "fedavg", "--clients", "4", "--workers", "2", "--rounds", "1"]
    args += ["--dataset", "synthetic", "--model", "logreg", "--out-dir", "runs"]
    args += ["--set", "system.deadline=1", "--set", "system.stragglers=partial"]

    proc = cli("run", *args, cwd=tmp_path)

    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_line_error(proc.stderr, "stragglers=partial needs executor vectorized", "processes")
    assert list(tmp_path.iterdir()) == []


def test_a_round_with_partial_work_counts_the_samples_its_clients_trained(runs):
    """The round's samples are what its clients trained: more than the clients that finished
    in time trained alone (drop), and the summary's figure is their sum."""
    drop, partial = kinds(runs["drop"], "round"), kinds(runs["partial"], "round")

    for cut, finished in zip(partial, drop, strict=True):
        assert finished["samples"] < cut["samples"]
    assert runs["partial"].summary["samples"] == sum(e["samples"] for e in partial)
