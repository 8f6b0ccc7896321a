"""FedBuff (Nguyen et al. 2022) on the simulated clock: faster to a target accuracy than
synchronous FedAvg under lognormal client speeds, deterministic, staleness-weighted, the same
trips on the processes and the vectorized executors, and its bad input refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distlab.api import run
from distlab.cli import main
from distlab.federated.buffered import BufferPlan, staleness_weight, train_buffered
from distlab.federated.types import Updates
from distlab.metrics import Recorder

TARGET = 0.85
SPEEDS = {"speed": "lognormal", "sigma": 1.0}
# 40 clients of mnist-sample (125 images each); both runs make 400 client trips.
BUFF = {"name": "fedbuff", "clients": 40, "rounds": 40, "concurrency": 20, "buffer": 10}
AVG = {"name": "fedavg", "clients": 40, "rounds": 20, "clients_per_round": 20}


def config(out, name: str, strategy: dict, **extra) -> dict:
    return {
        "dataset": "mnist-sample",
        "model": "logreg",
        "batch_size": 32,
        "optimizer": {"lr": 0.05},
        "strategy": strategy,
        "system": SPEEDS,
        "out_dir": str(out),
        "name": name,
        **extra,
    }


def events(result, kind: str) -> list[dict]:
    return [e for e in result.events if e["kind"] == kind]


def time_to(result, target: float) -> float:
    """Simulated seconds of the first evaluation at or above `target`."""
    hits = [e["sim_seconds"] for e in events(result, "eval") if e["accuracy"] >= target]
    assert hits, f"{result.run_dir.name} never reached {target}"
    return hits[0]


def trips(result) -> list[tuple]:
    """Each aggregation's clients, mean staleness and simulated time."""
    return [(e["clients"], e["staleness"], e["sim_seconds"]) for e in events(result, "round")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fedbuff")
    buff = run(config(out, "buff", BUFF, eval_every=2))
    avg = run(config(out, "avg", {**AVG, "executor": "vectorized"}, eval_every=1))
    return buff, avg


@pytest.mark.slow
def test_fedbuff_reaches_the_target_in_less_simulated_time_than_fedavg(runs):
    buff, avg = runs
    buff_trips = sum(len(e["clients"]) for e in events(buff, "round"))
    avg_trips = sum(len(e["clients"]) for e in events(avg, "round"))
    assert buff_trips == avg_trips == 400

    buff_time, avg_time = time_to(buff, TARGET), time_to(avg, TARGET)
    print(f"time to {TARGET}: fedbuff {buff_time:.3f} s, fedavg {avg_time:.3f} s simulated")
    assert buff_time < avg_time
    # the whole run too: no one waits for the slowest client
    assert events(buff, "round")[-1]["sim_seconds"] < events(avg, "round")[-1]["sim_seconds"]


@pytest.mark.slow
def test_rounds_carry_the_clock_and_the_staleness(runs):
    buff, _ = runs
    rounds = events(buff, "round")
    assert [e["round"] for e in rounds] == list(range(1, 41))
    assert all(len(e["clients"]) == BUFF["buffer"] for e in rounds)
    clock = [e["sim_seconds"] for e in rounds]
    assert clock == sorted(clock) and clock[0] > 0
    # with 20 in flight and K = 10 most arrivals are a version or more old
    assert np.mean([e["staleness"] for e in rounds]) > 0.5
    assert all(0 <= e["staleness"] <= e["max_staleness"] for e in rounds)
    evals = events(buff, "eval")
    assert [e["round"] for e in evals] == list(range(2, 41, 2))
    by_round = {e["round"]: e["sim_seconds"] for e in rounds}
    assert all(e["sim_seconds"] == by_round[e["round"]] for e in evals)
    assert buff.summary["client_trips"] >= 400
    assert buff.summary["bytes_per_round_logical"] == 2 * 7850 * 4 * BUFF["buffer"]


@pytest.mark.slow
def test_a_seed_fixes_the_run_and_another_seed_changes_it(runs, tmp_path):
    buff, _ = runs
    again = run(config(tmp_path, "again", BUFF, eval_every=2))
    assert trips(again) == trips(buff)
    assert [e["loss"] for e in events(again, "round")] == [e["loss"] for e in events(buff, "round")]
    first = torch.load(buff.run_dir / "model.pt", weights_only=True)
    second = torch.load(again.run_dir / "model.pt", weights_only=True)
    assert all(torch.equal(first[k], second[k]) for k in first)

    other = run(config(tmp_path, "other", {**BUFF, "rounds": 4}, seed=1))
    assert trips(other) != trips(buff)[:4]


class ShiftExecutor:
    """Client c's local model is the start plus (c + 1) in every coordinate."""

    def train(self, round_: int, start: torch.Tensor, clients: np.ndarray) -> Updates:
        rows = start + torch.tensor(clients + 1.0, dtype=torch.float32)[:, None]
        ones = np.ones(len(clients))
        return Updates(clients, rows, ones.astype(np.int64), {"loss": ones})

    def close(self) -> None:
        pass


def test_the_server_step_weights_each_update_by_its_staleness():
    # client c takes 1 + c simulated seconds; 3 in flight, K = 2, clients drawn from 4
    plan = BufferPlan(rounds=3, clients=4, concurrency=3, buffer=2, server_lr=0.5)
    globals_, rounds = {}, []
    recorder = Recorder(None, "t", 0, "server", on_event=rounds.append)
    final = train_buffered(
        plan,
        ShiftExecutor(),
        1.0 + np.arange(4),
        lambda version, clients, at: np.ones(len(clients), dtype=bool),
        torch.zeros(3),
        recorder,
        lambda version, current, now: globals_.setdefault(version, current.clone()),
    )
    rounds = [e for e in rounds if e["kind"] == "round"]
    assert len(rounds) == 3 and sorted(globals_) == [1, 2, 3]
    assert any(max(e["taus"]) > 0 for e in rounds)  # some updates arrive stale
    last = 0.0
    for e in rounds:
        weights = 1 / np.sqrt(1 + np.array(e["taus"]))
        step = plan.server_lr * float(weights @ (np.array(e["clients"]) + 1.0)) / plan.buffer
        assert globals_[e["round"]].tolist() == pytest.approx([last + step] * 3)
        assert e["staleness"] == pytest.approx(np.mean(e["taus"]))
        last += step
    assert torch.allclose(final, torch.full((3,), last))
    assert staleness_weight("sqrt", np.array([0, 3])) == pytest.approx([1.0, 0.5])
    assert staleness_weight("constant", np.array([5])) == pytest.approx([1.0])
    assert staleness_weight("poly", np.array([3]), 1.0) == pytest.approx([0.25])


@pytest.mark.slow
def test_processes_executor_runs_the_same_trips_as_vectorized(tmp_path):
    small = {**BUFF, "clients": 20, "rounds": 6, "concurrency": 8, "buffer": 4}
    vec = run(config(tmp_path, "vec", {**small, "executor": "vectorized"}, eval_every=3))
    proc = run(
        config(tmp_path, "proc", {**small, "executor": "processes"}, eval_every=3, workers=2)
    )
    assert trips(proc) == trips(vec)
    acc = [e["accuracy"] for e in events(vec, "eval")]
    assert [e["accuracy"] for e in events(proc, "eval")] == pytest.approx(acc, abs=2e-3)
    assert proc.summary["bytes_total_measured"] >= proc.summary["bytes_total_logical"] // 2


@pytest.mark.parametrize(
    ("sets", "parts"),
    [
        (
            ["strategy.concurrency=4", "strategy.buffer=8"],
            ["strategy.buffer (8) must be <= strategy.concurrency (4)"],
        ),
        (["strategy.concurrency=30"], ["strategy.concurrency (30) must be <= clients (20)"]),
        (["system.deadline=5"], ["system.deadline applies to synchronous rounds"]),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, sets, parts):
    argv = ["run", "--strategy", "fedbuff", "--clients", "20", "--dataset", "synthetic"]
    argv += ["--model", "logreg", "--out-dir", str(tmp_path / "out"), "-q"]
    for item in sets:
        argv += ["--set", item]
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert all(part in err for part in parts), err
    assert not (tmp_path / "out").exists()
