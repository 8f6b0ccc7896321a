"""Gossip on real gloo groups: complete averaging is local SGD step by step, more rounds on a
ring mean more agreement, exchange bytes match degree x 2 x P x 4 and the measuring
allreduces theirs, apart, every byte figure beside its formula, personalized reports,
Ditto's personal models on a ring beat local-only training on non-IID parts, and bad graphs
and settings are refused before any process starts."""

from __future__ import annotations

import numpy as np
import pytest
from tests.conftest import cli, run_small
from tests.integration.test_data_parallel import assert_same_run


def gossip(**params) -> dict:
    return {"name": "gossip", **params}


def lead(result, kind: str) -> list[dict]:
    return [e for e in result.events if e["kind"] == kind and e["rank"] == 0]


def distance_at(result) -> dict[int, float]:
    return {e["step"]: e["consensus_distance"] for e in lead(result, "round")}


def assert_bytes_match_formulas(summary: dict) -> None:
    """Every measured byte figure of the summary equals the formula beside it, and no figure
    has a second key: the byte figures are exactly these three pairs."""
    pairs = ("bytes_per_round", "mix_bytes_per_round", "measure_bytes_per_round")
    figures = {k for k, v in summary.items() if "bytes" in k and isinstance(v, int | float)}
    assert figures == {f"{p}_{kind}" for p in pairs for kind in ("measured", "analytic")}
    for p in pairs:
        assert summary[f"{p}_measured"] == pytest.approx(summary[f"{p}_analytic"], abs=0.1)


def test_complete_uniform_period_one_equals_local_sgd(tmp_path):
    # 4 workers, a global batch of 32 split 8 + 8 + 8 + 8 (the last one 4 x 4): uniform
    # weights on the complete graph are the plain average local SGD takes every step.
    local = run_small(tmp_path / "l", strategy={"name": "local-sgd", "period": 1}, workers=4)

    result = run_small(tmp_path / "g", strategy=gossip(topology="complete"), workers=4)

    assert_same_run(local, result)
    summary, params = result.summary, result.summary["params"]
    assert summary["rounds"] == summary["steps"] == 63
    assert summary["samples"] == local.summary["samples"] == 2000
    assert summary["spectral_gap"] == pytest.approx(1.0)
    assert max(distance_at(result).values()) < 1e-5  # one round of complete mixing agrees
    assert summary["mix_bytes_per_round_measured"] == 3 * 2 * params * 4


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    """A ring of 4 mixing every step and every 8 steps, with an evaluation every 8 steps."""
    root = tmp_path_factory.mktemp("ring")
    return {
        period: run_small(
            root / str(period), strategy=gossip(period=period), workers=4, eval_every=8
        )
        for period in (1, 8)
    }


def test_ring_consensus_distance_falls_with_more_rounds(ring):
    often, rarely = distance_at(ring[1]), distance_at(ring[8])

    # Both runs measure after their rounds at steps 8, 16, ..., 56 and 63.
    common = sorted(set(often) & set(rarely))
    assert common == [*range(8, 57, 8), 63]
    assert all(often[s] < rarely[s] for s in common)
    assert ring[1].summary["consensus_distance"] == often[63] > 0
    assert ring[8].summary["rounds"] == 8 and ring[1].summary["rounds"] == 63


def test_ring_bytes_match_degree_times_two_times_p(ring):
    summary, params = ring[1].summary, ring[1].summary["params"]
    per_worker = 2 * 2 * params * 4  # 2 neighbours, a model each way, float32
    # Two allreduces, each counted in and out: the model with the loss and sample count
    # (P + 2 float32), then the distance to the average (one float32).
    measuring = 2 * (params + 2) * 4 + 2 * 4

    assert summary["mean_degree"] == 2.0
    assert summary["spectral_gap"] == pytest.approx(2 / 3)  # 1 - (1 + 2 cos(pi / 2)) / 3
    assert summary["mix_bytes_per_round_measured"] == per_worker
    assert summary["mix_bytes_per_round_analytic"] == per_worker
    assert summary["measure_bytes_per_round_measured"] == measuring
    assert summary["measure_bytes_per_round_analytic"] == measuring
    assert summary["bytes_per_round_measured"] == per_worker + measuring
    assert_bytes_match_formulas(summary)
    assert all(e["mix_bytes"] == per_worker for e in lead(ring[1], "round"))


def test_an_evaluation_between_rounds_adds_a_measurement(tmp_path):
    # Period 5 over 63 steps: 13 rounds (steps 5, ..., 60 and 63); evaluations every 4 steps
    # fall between rounds at 12 of their 15 steps (20, 40 and 60 are rounds), and each
    # builds the average model once more.
    result = run_small(tmp_path, strategy=gossip(period=5), workers=2, eval_every=4)

    summary, params = result.summary, result.summary["params"]
    rounds = lead(result, "round")
    assert summary["rounds"] == len(rounds) == 13
    measuring = 2 * (params + 2) * 4 + 2 * 4
    assert sum(e["measure_bytes"] for e in rounds) == (13 + 12) * measuring
    assert summary["mix_bytes_per_round_measured"] == 2 * params * 4  # a ring of 2: 1 peer
    assert_bytes_match_formulas(summary)


def test_personalized_star_reports_each_workers_local_accuracy(tmp_path):
    personal = {"personalized": True, "finetune": 3, "personal_head": True}
    result = run_small(
        tmp_path,
        strategy=gossip(topology="star", mixing="metropolis", **personal),
        partition={"scheme": "dirichlet", "alpha": 0.5},
        workers=4,
        epochs=2,
    )

    evals = lead(result, "eval")
    assert len(evals) == 2  # one per epoch
    last, summary = evals[-1], result.summary
    accs = last["local_accuracies"]
    assert len(accs) == 4 and all(0 <= a <= 1 for a in accs)
    assert last["local_accuracy_mean"] == pytest.approx(np.mean(accs))
    assert last["local_accuracy_worst"] == pytest.approx(min(accs))
    assert summary["local_accuracy_mean"] == last["local_accuracy_mean"]
    assert summary["final_accuracy"] > 0.5  # the averaged model on the global test set
    # The hub (rank 0, the lead) swaps with all 3 others every round, all but the head:
    # the MLP's last layer, 200 x 4 weights and 4 biases, stays with each worker.
    mixed = summary["params"] - (200 * 4 + 4)
    assert {e["mixed_params"] for e in lead(result, "round")} == {mixed}
    assert summary["mix_bytes_per_round_measured"] == 3 * 2 * mixed * 4
    assert summary["mix_bytes_per_round_analytic"] == 3 * 2 * mixed * 4
    assert summary["mean_degree"] == 1.5
    # All traffic per worker: the leaves swap with the hub only, and each evaluation
    # gathers every worker's accuracy to the lead.
    assert_bytes_match_formulas(summary)
    assert summary["batch_size_meaning"] == "per worker (its own part)"


def test_ditto_on_a_ring_beats_local_only_on_local_accuracy(tmp_path):
    # mnist-sample in Dirichlet(0.1) parts over 4 workers (mostly one to three classes each),
    # the same 4 epochs of batches for both; local-only is the same strategy without mixing.
    # Seeds 0 to 3 gave +0.019, +0.011, +0.004, +0.009 (docs/paradigms.md); seed 0 here.
    common = {
        "dataset": "mnist-sample",
        "model": "mlp",
        "workers": 4,
        "epochs": 4,
        "partition": {"scheme": "dirichlet", "alpha": 0.1},
        "threads": 1,
    }
    alone = gossip(topology="none", personalized=True)
    local = run_small(tmp_path / "l", strategy=alone, **common)

    personal = gossip(personalized=True, personal="ditto")
    ditto = run_small(tmp_path / "d", strategy=personal, **common)

    mine, theirs = ditto.summary, local.summary
    assert mine["local_accuracy_mean"] > theirs["local_accuracy_mean"]  # 0.948 against 0.929
    assert mine["local_accuracy_worst"] > theirs["local_accuracy_worst"]  # 0.933 against 0.889
    # The personal models never leave their workers: a ring round moves the gossip model only.
    assert mine["mix_bytes_per_round_measured"] == 2 * 2 * mine["params"] * 4
    # The gossip models learned from every part: their average scores far higher on the
    # global test set than the average of the local-only models.
    assert mine["final_accuracy"] > theirs["final_accuracy"] + 0.2  # 0.866 against 0.328


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("workers", "settings", "message"),
    [
        ("4", ["topology=hypercube"], "unknown topology 'hypercube' (allowed: ring, torus,"),
        ("7", ["topology=torus"], "topology torus needs --workers = rows x cols with both >= 2"),
        ("4", ["topology=file", "graph_file={islands}"], "is not connected: worker 0 cannot"),
        ("4", ["topology=file", "graph_file={stranger}"], "worker 9 does not exist (workers"),
        ("4", ["personal=ditto"], "strategy.personal ditto applies to personalized runs"),
        ("4", ["personalized=true", "ditto_lambda=1"], "ditto_lambda applies to personal ditto"),
        (
            "4",
            ["personalized=true", "personal=ditto", "label_prior=true"],
            "label_prior shifts a model trained on every worker's data; drop personal ditto",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, workers, settings, message):
    files = {
        "islands": write(tmp_path, "islands.txt", "0 1\n2 3\n"),
        "stranger": write(tmp_path, "stranger.txt", "0 1\n1 2\n2 3\n0 9\n"),
    }
    args = [a for s in settings for a in ("--set", "strategy." + s.format(**files))]

    done = cli("run", "--strategy", "gossip", "--workers", workers, *args, cwd=tmp_path)

    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_curvature_mixing_with_k_zero_is_uniform_mixing(tmp_path):
    # project_mix with no eigenvectors moves all the way to the uniform mix; a different
    # expression for the same numbers, so equal to float rounding.
    common = {"workers": 2, "epochs": 1}
    uniform = run_small(tmp_path / "u", strategy=gossip(), **common)

    curved = run_small(tmp_path / "c", strategy=gossip(mixing="curvature", k=0), **common)

    assert_same_run(uniform, curved, tol=1e-5)
    assert curved.summary["consensus_distance"] == pytest.approx(
        uniform.summary["consensus_distance"], rel=1e-3
    )


def test_curvature_mixing_runs_on_mnist_sample_with_4_workers(tmp_path):
    result = run_small(
        tmp_path,
        dataset="mnist-sample",
        model="lenet",
        workers=4,
        threads=1,
        strategy={"name": "gossip", "mixing": "curvature", "k": 2, "period": 4},
    )

    summary = result.summary
    assert summary["status"] == "completed" and summary["mixing"] == "curvature"
    assert summary["final_accuracy"] > 0.3 and summary["consensus_distance"] is not None


def test_k_above_the_parameter_count_is_refused_before_the_run(tmp_path):
    done = cli(
        "run", "--strategy", "gossip", "--workers", "4", "--dataset", "synthetic", "--model",
        "logreg", "--set", "strategy.mixing=curvature", "--set", "strategy.k=5000",
        "--set", "strategy.curvature_iterations=6000", cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 2
    assert "strategy.k (got 5000) must be <= the model's 84 parameters" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()
