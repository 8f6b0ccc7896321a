"""Edge boards as a federated executor: real edge_lr firmware on simavr, one board per
client. The run's final model equals FedAvg replayed in numpy with the boards' float32
reference, bit for bit; a board killed mid-run is named and the rounds go on; bad input is
one line before any board starts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import torch
from tests.conftest import cli

from distlab.config import validate_config
from distlab.data.datasets import load_dataset
from distlab.data.partition import partition
from distlab.edge.reference import reference_train
from distlab.edge.toolchain import FIRMWARE_NEEDS, RUNNER_NEEDS, missing_message
from distlab.federated.clients import split_clients
from distlab.federated.optimizers import ServerOptimizer
from distlab.federated.types import Updates
from distlab.strategies.fedavg import make_aggregate, make_server_step, round_plan

pytestmark = pytest.mark.skipif(
    missing_message(FIRMWARE_NEEDS + RUNNER_NEEDS) is not None,
    reason=f"edge boards {missing_message(FIRMWARE_NEEDS + RUNNER_NEEDS)}",
)

RUN = ("run", "--strategy", "fedavg", "--model", "logreg", "--dataset", "breast-cancer",
       "--clients", "3", "--set", "strategy.executor=serial", "--set", "edge.boards=3")  # fmt: skip


def replay(cfg) -> dict[str, torch.Tensor]:
    """FedAvg over the boards' float32 reference: each round every client trains its shard
    from the global weights exactly as its board does, then distlab's own aggregate and
    server step combine them in client order."""
    data = load_dataset(cfg.dataset)
    parts = partition(data.y_train.numpy(), cfg.strategy.clients, cfg.partition, cfg.seed)
    shards = split_clients(parts.indices, 0.0, cfg.seed).train
    x = data.x_train.numpy().astype(np.float32)
    y = data.y_train.numpy()
    from distlab.models import build_model
    from distlab.training import flat_params

    model = build_model("logreg", data.input_shape, 2, cfg.seed)
    current = flat_params(model).clone()
    aggregate = make_aggregate(cfg.strategy)
    server = ServerOptimizer(make_server_step(cfg.strategy))
    plan = round_plan(cfg, cfg.strategy)
    for _ in range(plan.rounds):
        w, b = current[:-1].numpy(), np.float32(current[-1].item())
        rows = []
        for shard in shards:
            w2, b2 = reference_train(w, b, x[shard], y[shard], cfg.strategy.local_epochs,
                                     cfg.optimizer.lr, cfg.batch_size)  # fmt: skip
            rows.append(torch.from_numpy(np.append(w2, b2).astype(np.float32)))
        sizes = np.array([len(s) for s in shards])
        updates = Updates(np.arange(len(shards)), torch.stack(rows), sizes,
                          {"loss": np.zeros(len(shards))})  # fmt: skip
        current = server.step(current, aggregate(updates))
    return {"net.1.weight": current[:-1].reshape(1, -1), "net.1.bias": current[-1:]}


def test_five_rounds_on_three_boards_equal_the_float32_replay(tmp_path):
    done = cli(*RUN, "--rounds", "5", "--out-dir", str(tmp_path), "--name", "boards", "--json",
               timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    run_dir = tmp_path / "boards"
    assert summary["status"] == "completed" and summary["rounds"] == 5
    assert {"config.json", "events.jsonl", "summary.json", "model.pt"} <= {
        p.name for p in run_dir.iterdir()
    }
    cfg = validate_config(json.loads((run_dir / "config.json").read_text()))
    expected = replay(cfg)
    state = torch.load(run_dir / "model.pt", weights_only=True)
    for name, value in expected.items():
        assert torch.equal(state[name], value), name  # bit for bit
    assert summary["final_accuracy"] > 0.9
    # Every byte on the wire is counted: the shards streamed each round dominate.
    assert summary["bytes_per_round_measured"] > 10 * summary["bytes_per_round_logical"]
    trained = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    trained = [e for e in trained if e["kind"] == "client" and e["status"] == "trained"]
    assert len(trained) == 15 and {e["address"] for e in trained} != {None}


def simrunners(parent: subprocess.Popen) -> list[psutil.Process]:
    """The simulator processes below `parent` (a short-lived child may vanish meanwhile)."""
    for _ in range(10):
        try:
            children = psutil.Process(parent.pid).children(recursive=True)
            return [c for c in children if "simrunner" in " ".join(c.cmdline())]
        except psutil.NoSuchProcess:
            if parent.poll() is not None:
                return []
    return []


def test_a_board_killed_mid_run_is_named_and_the_rounds_go_on(tmp_path):
    run = subprocess.Popen(
        [sys.executable, "-m", "distlab", *RUN, "--rounds", "3", "--set",
         "strategy.local_epochs=5", "--set", "strategy.min_clients=2", "--set",
         "edge.timeout=3", "--out-dir", str(tmp_path), "--name", "killed", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        events = tmp_path / "killed" / "events" / "rank-0.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if events.exists() and '"kind": "round"' in events.read_text():
                break
            time.sleep(0.1)
        runners = simrunners(run)
        assert len(runners) == 3
        runners[2].send_signal(signal.SIGKILL)  # the board of client 2 (started last)
        _, err = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err[-2000:]
    log = [json.loads(line) for line in (tmp_path / "killed" / "events.jsonl").read_text()
           .splitlines()]  # fmt: skip
    lost = [e for e in log if e["kind"] == "client" and e["status"] == "lost"]
    assert lost and {e["client"] for e in lost} == {2}
    assert "board 2" in lost[0]["reason"]
    rounds = [e for e in log if e["kind"] == "round"]
    # a board that stopped answering failed its rounds; rejected is for unusable replies
    assert len(rounds) == 3 and rounds[-1]["failed"] == [2] and rounds[-1]["rejected"] == []
    assert not simrunners(run)


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (("--dataset", "mnist-sample"), "two-class dataset"),
        (("--dataset", "breast-cancer", "--set", "edge.boards=2"), "2 boards for 3 clients"),
        (("--set", "edge.baud=250000"), "edge.baud must be one of"),
        (
            (
                "--set",
                "edge.boards=0",
                "--set",
                "edge.ports=[/dev/ttyNOPE0,/dev/ttyNOPE1,/dev/ttyNOPE2]",
            ),
            "/dev/ttyNOPE0 does not exist",
        ),  # fmt: skip
        (("--set", "optimizer.momentum=0.9"), "plain SGD"),
    ],
)
def test_bad_board_settings_are_one_line(tmp_path, extra, said):
    done = cli(*RUN, *extra, "--out-dir", str(tmp_path / "runs"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and said in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists()
