"""Hogwild! (Niu et al. 2011) on real processes: two workers write one shared-memory model,
with and without the lock, and it learns; every update is counted; a killed worker is named
and leaves nothing behind; CUDA and an external launcher are refused before anything starts;
SIGTERM stops and records the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.conftest import assert_no_orphans, cli, final_state, make_config, step_losses

import distlab
from distlab.data.datasets import load_dataset
from distlab.models import build_model
from distlab.training import evaluate

LONG_RUN = ["run", "--strategy", "hogwild", "--workers", "2", "--dataset", "synthetic"]
LONG_RUN += ["--model", "mlp", "--epochs", "300", "--quiet"]


def start_long_run(tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "distlab", *LONG_RUN, "--out-dir", str(tmp_path), "--name", "r"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def rank_events(run_dir: Path, rank: int) -> list[dict]:
    path = run_dir / "events" / f"rank-{rank}.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]


def wait_for_steps(run_dir: Path, deadline: float = 60) -> list[int]:
    """Wait until both ranks have written steps; return their pids, by rank."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        events = [rank_events(run_dir, rank) for rank in (0, 1)]
        pids = [next((e["pid"] for e in own if e.get("phase") == "start"), None) for own in events]
        if None not in pids and all(any(e["kind"] == "step" for e in own) for own in events):
            return pids
        time.sleep(0.1)
    raise AssertionError("the run never reached its first steps")


def saved_model_accuracy(result) -> float:
    cfg, data = result.config, load_dataset(result.config["dataset"])
    model = build_model(cfg["model"], data.input_shape, data.classes, cfg["seed"])
    model.load_state_dict(final_state(result))
    return evaluate(model, data.x_test, data.y_test, data.classes).accuracy


@pytest.mark.parametrize(
    ("workers", "lock"), [(2, False), (2, True), (4, False)], ids=["2-lock-free", "2-locked", "4"]
)
def test_workers_train_one_shared_model(tmp_path, workers, lock):
    cfg = make_config(
        tmp_path,
        dataset="mnist-sample",
        model="lenet",
        workers=workers,
        eval_every=50,
        strategy={"name": "hogwild", "lock": lock},
    )

    result = distlab.run(cfg)

    summary = result.summary
    ranks = range(workers)
    steps = [[e for e in result.events if e["kind"] == "step" and e["rank"] == r] for r in ranks]
    assert summary["status"] == "completed"
    # measured 0.878 lock-free and 0.907 locked with 2 workers, 0.895 lock-free with 4 (seed
    # 0, one epoch of 4000 images; the batch of 32 is split among the workers)
    assert summary["final_accuracy"] > 0.8
    # the tallies in shared memory agree with the steps each worker recorded
    assert summary["updates_per_rank"] == [len(own) for own in steps] == [125] * workers
    assert summary["total_updates"] == 125 * workers
    assert summary["samples"] == sum(e["samples"] for own in steps for e in own) == 4000
    assert summary["samples_per_second"] > 0
    # the lead evaluated while the other worker wrote, then once both had finished
    assert [e["step"] for e in result.events if e["kind"] == "eval"] == [50, 100, 125]
    assert summary["bytes_per_step_measured"] == 0 and summary["bytes_per_step_analytic"] == 0
    one_sample = 1 / 1000
    assert saved_model_accuracy(result) == pytest.approx(summary["final_accuracy"], abs=one_sample)


def test_one_worker_is_centralized_sgd_step_by_step(tmp_path):
    """Alone, a worker of the shared model is plain SGD: centralized's losses, bit for bit."""
    hogwild = distlab.run(make_config(tmp_path, strategy="hogwild", name="h", threads=1))
    central = distlab.run(make_config(tmp_path, strategy="centralized", name="c", threads=1))

    assert len(step_losses(hogwild)) == 63
    assert step_losses(hogwild) == step_losses(central)
    hogwild_state, central_state = final_state(hogwild), final_state(central)
    assert all(torch.equal(hogwild_state[k], central_state[k]) for k in central_state)


def test_a_killed_worker_is_named_and_nothing_is_left(tmp_path):
    proc = start_long_run(tmp_path)
    run_dir = tmp_path / "r"
    pids = wait_for_steps(run_dir)

    os.kill(pids[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == 1
    assert err == "error: run failed: rank 1 died (killed by SIGKILL)\n"
    assert_no_orphans([proc.pid, *pids])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"] == "rank 1 died (killed by SIGKILL)"
    assert summary["steps"] > 0
    assert summary["total_updates"] is None  # the tallies were never read: no figure, not 0


def test_sigterm_stops_and_records_the_run(tmp_path):
    proc = start_long_run(tmp_path)
    run_dir = tmp_path / "r"
    pids = wait_for_steps(run_dir)

    os.kill(proc.pid, signal.SIGTERM)  # the main process only, as kill and docker stop do
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == 143
    assert err == f"error: terminated by SIGTERM; partial run kept in {run_dir}\n"
    assert_no_orphans([proc.pid, *pids])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "terminated"
    assert summary["steps"] > 0
    assert not {"error", "rank_errors"} & set(summary)


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (
            ["--device", "cuda"],
            {},
            "strategy hogwild shares one model in this machine's CPU memory; --device must be "
            "cpu or auto (got cuda)",
        ),
        (
            [],
            {"RANK": "0", "WORLD_SIZE": "2"},
            "strategy hogwild starts its own processes on one machine to share one model in "
            "memory; it cannot run as rank 0 of 2 of torchrun, mpirun or Slurm: start it "
            "without them",
        ),
    ],
    ids=["cuda", "external-launcher"],
)
def test_one_machine_only_is_said_before_anything_starts(tmp_path, args, env, said):
    done = cli(
        "run", "--strategy", "hogwild", "--workers", "2", "--out-dir", str(tmp_path), *args, env=env
    )

    assert done.returncode == 2
    assert done.stderr == f"error: {said}\n"
    assert not list(tmp_path.iterdir())  # no run directory was made


def test_shared_memory_is_the_only_channel():
    """The shared launcher's communicator moves no messages and says what to use instead."""
    from distlab.runtime.launchers.shared import SharedMemoryComm

    comm = SharedMemoryComm(0, 2, barrier=None, timeout=1)

    with pytest.raises(RuntimeError, match="share ctx.shared"):
        comm.all_reduce(torch.zeros(3))
    assert comm.stats()["bytes_sent"] == comm.stats()["bytes_recv"] == 0
