"""FedAvg end to end: real gloo processes, the vectorized executor, and their agreement."""

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distlab.api import finish_run, load_run, make_job, prepare_run_dir, run
from distlab.cli import main
from distlab.config import validate_config
from distlab.data.datasets import load_dataset, make_synthetic
from distlab.models import build_model
from distlab.runtime.launch import RunFailed, run_inline
from distlab.strategies import get_spec

# Process runs: 4 clients on 4 client hosts plus the server, 5 rounds of 2 local epochs.
FED = {"clients": 4, "rounds": 5, "local_epochs": 2}
COMMON = {
    "dataset": "digits",
    "model": "logreg",
    "batch_size": 16,
    "optimizer": {"lr": 0.05, "momentum": 0.5},
    "eval_every": 5,
}


def final_state(run_dir):
    return torch.load(run_dir / "model.pt", weights_only=True)


def max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def process_runs(tmp_path_factory):
    """The iid run through the CLI, the non-IID one through the API; both 5 processes."""
    out = tmp_path_factory.mktemp("runs")
    argv = ["run", "--strategy", "fedavg", "--clients", "4", "--workers", "4", "--rounds", "5"]
    argv += ["--partition", "iid", "--dataset", "digits", "--model", "logreg", "--lr", "0.05"]
    argv += ["--batch-size", "16", "--set", "strategy.local_epochs=2", "--set", "eval_every=5"]
    argv += ["--set", "optimizer.momentum=0.5", "--out-dir", str(out), "--name", "iid", "-q"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    noniid = run(
        {
            **COMMON,
            "strategy": {"name": "fedavg", **FED},
            "workers": 4,
            "partition": {"scheme": "dirichlet", "alpha": 0.1},
            "out_dir": str(out),
            "name": "dirichlet",
        }
    )
    return load_run(out / "iid"), noniid


def test_process_runs_complete_with_counted_traffic(process_runs):
    for result in process_runs:
        s = result.summary
        assert s["status"] == "completed" and s["processes"] == 5 and s["rounds"] == 5
        roles = {e["role"] for e in result.events}
        assert roles == {"server", "client-host"}
        # every byte the hosts sent or got went to or came from the server
        hosts = [v for r, v in s["bytes_per_rank"].items() if r != "0"]
        assert sum(h["bytes_sent"] for h in hosts) == s["bytes_per_rank"]["0"]["bytes_recv"]
        assert s["bytes_total_measured"] >= s["bytes_total_logical"] * 0.99


def test_non_iid_partition_ends_with_lower_accuracy(process_runs):
    iid, noniid = process_runs

    assert noniid.summary["final_accuracy"] < iid.summary["final_accuracy"] - 0.02


@pytest.mark.parametrize("which", [0, 1])
def test_vectorized_executor_matches_processes(process_runs, tmp_path, which):
    reference = process_runs[which]
    cfg = dict(reference.config)
    cfg.update(workers=1, out_dir=str(tmp_path), name="vectorized")
    cfg["strategy"] = {**cfg["strategy"], "executor": "vectorized"}

    vectorized = run(cfg)

    assert max_diff(final_state(vectorized.run_dir), final_state(reference.run_dir)) < 1e-4
    assert vectorized.summary["processes"] == 1


@pytest.mark.parametrize("which", [0, 1])
def test_sequential_executor_reproduces_the_process_run_bit_for_bit(process_runs, tmp_path, which):
    reference = process_runs[which]
    host_threads = {
        e["threads"] for e in reference.events if e.get("phase") == "start" and e["rank"] > 0
    }
    cfg = dict(reference.config)
    # the hosts' thread count: a convolution's or matmul's sum order depends on it
    cfg.update(workers=1, threads=host_threads.pop(), out_dir=str(tmp_path), name="sequential")
    cfg["strategy"] = {**cfg["strategy"], "executor": "sequential"}

    sequential = run(cfg)

    assert max_diff(final_state(sequential.run_dir), final_state(reference.run_dir)) == 0
    mine, theirs = round_events(sequential), round_events(reference)
    assert [(e["clients"], e["samples"]) for e in mine] == [
        (e["clients"], e["samples"]) for e in theirs
    ]
    # hosts send each client's mean loss as float32
    assert [e["loss"] for e in mine] == pytest.approx([e["loss"] for e in theirs], rel=1e-6)


def round_events(result):
    return [e for e in result.events if e["kind"] == "round"]


def test_diverging_clients_are_named_in_the_round_failure(tmp_path):
    with pytest.raises(RunFailed, match=r"rejected: 0 \(NaN/Inf\), 1 \(NaN/Inf\)"):
        run(
            {
                "dataset": "synthetic",
                "model": "logreg",
                "strategy": {"name": "fedavg", "clients": 2, "rounds": 1, "max_retries": 0},
                "optimizer": {"lr": 1e38},
                "out_dir": str(tmp_path),
                "name": "diverge",
            }
        )


def synthetic_run(tmp_path, name, **strategy):
    return run(
        {
            "dataset": "synthetic",
            "model": "logreg",
            "strategy": {"name": "fedavg", "executor": "vectorized", **strategy},
            "optimizer": {"lr": 0.1},
            "out_dir": str(tmp_path),
            "name": name,
        }
    )


def test_one_client_full_batch_is_centralized_full_batch_gd(tmp_path):
    result = synthetic_run(tmp_path, "k1", clients=1, rounds=3, local_batch="full")
    data = load_dataset("synthetic")
    model = build_model("logreg", data.input_shape, data.classes, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = []
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(data.x_train), data.y_train).backward()
        opt.step()
        with torch.no_grad():
            expected.append(float(F.cross_entropy(model(data.x_test), data.y_test)))

    losses = [e["loss"] for e in result.events if e["kind"] == "eval"]

    assert losses == pytest.approx(expected, abs=1e-5)
    assert max_diff(final_state(result.run_dir), model.state_dict()) < 1e-5


def test_fedprox_with_mu_zero_is_fedavg_and_mu_changes_it(tmp_path):
    base = {"clients": 5, "rounds": 2, "local_epochs": 2}
    fedavg = synthetic_run(tmp_path, "avg", **base)
    prox0 = synthetic_run(tmp_path, "prox0", algorithm="fedprox", mu=0.0, **base)
    prox1 = synthetic_run(tmp_path, "prox1", algorithm="fedprox", mu=1.0, **base)

    assert max_diff(final_state(prox0.run_dir), final_state(fedavg.run_dir)) == 0
    assert max_diff(final_state(prox1.run_dir), final_state(fedavg.run_dir)) > 1e-4


def test_adaptive_server_optimizers_differ_in_their_second_moment(tmp_path):
    base = {"clients": 4, "rounds": 3, "server_lr": 0.01}
    runs = {
        algorithm: synthetic_run(tmp_path, algorithm, algorithm=algorithm, **base)
        for algorithm in ("fedadam", "fedadagrad", "fedyogi")
    }
    states = {name: final_state(result.run_dir) for name, result in runs.items()}

    assert all(r.summary["status"] == "completed" for r in runs.values())
    assert max_diff(states["fedadagrad"], states["fedadam"]) > 1e-6
    assert max_diff(states["fedyogi"], states["fedadam"]) > 1e-6


def test_client_failures_are_injected_logged_and_excluded(tmp_path):
    result = synthetic_run(
        tmp_path, "fail", clients=20, clients_per_round=10, rounds=4, client_failure_rate=0.3
    )
    rounds = [e for e in result.events if e["kind"] == "round"]

    assert result.summary["status"] == "completed" and len(rounds) == 4
    assert sum(len(e["failed"]) for e in rounds) > 0
    for e in rounds:
        assert set(e["failed"]) <= set(e["clients"]) and len(e["clients"]) == 10
        # synthetic: 2000 samples over 20 clients = 100 each; failed clients train nothing
        assert e["samples"] == 100 * (10 - len(e["failed"]) - len(e["rejected"]))


def test_too_many_failures_stop_the_run_with_a_clear_message(tmp_path):
    message = "RoundFailed: .*fewer than 8 usable client updates after 2 attempts"
    with pytest.raises(RunFailed, match=message):
        synthetic_run(
            tmp_path,
            "stop",
            clients=10,
            rounds=2,
            client_failure_rate=0.9,
            min_clients=8,
            max_retries=1,
        )


def test_personalization_reports_client_accuracy_before_and_after(tmp_path):
    result = synthetic_run(
        tmp_path, "pers", clients=4, rounds=2, local_test_fraction=0.2, finetune=3
    )
    final = [e for e in result.events if e["kind"] == "eval"][-1]

    assert 0 <= final["client_accuracy"] <= 1
    assert 0 <= final["personalized_accuracy"] <= 1


def test_ten_thousand_virtual_clients_fit_in_one_process(tmp_path):
    cfg = validate_config(
        {
            "dataset": "synthetic",
            "model": "logreg",
            "strategy": {
                "name": "fedavg",
                "clients": 10_000,
                "rounds": 2,
                "executor": "vectorized",
            },
            "out_dir": str(tmp_path),
            "name": "many",
        }
    )
    run_dir = prepare_run_dir(cfg)
    start = time.time()
    # the registered synthetic set has 2000 samples; 10,000 clients need more
    job = make_job(cfg, get_spec("fedavg"), 1)
    run_inline(cfg, job, run_dir, start, make_synthetic(samples=20_000))
    finish_run(cfg, get_spec("fedavg"), run_dir, 1, start, "completed")
    summary = load_run(run_dir).summary

    assert summary["rounds"] == 2 and summary["status"] == "completed"
    assert summary["samples"] == 2 * 20_000
    assert summary["peak_rss_mb"] < 2048
    assert np.isfinite(summary["final_loss"])
