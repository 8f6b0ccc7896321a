"""A run stopped after a checkpoint and resumed ends exactly where an uninterrupted run with the
same seed ends: the same per-step (or per-round) losses, the same final weights, one event per
step, and a summary that counts the restart."""

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
from tests.conftest import assert_no_orphans, cli, final_state, make_config

from distlab.api import run
from distlab.runtime.launch import RunFailed

# strategy -> (config fields, the rank that dies, the unit the run counts in)
CASES = {
    "allreduce": ({"strategy": "allreduce", "workers": 2}, 1, "step"),
    "ddp": ({"strategy": "ddp", "workers": 2}, 1, "step"),
    "allreduce-momentum": (
        {"strategy": "allreduce", "workers": 2, "optimizer": {"momentum": 0.9}, "eval_every": 7},
        0,
        "step",
    ),
}


def config(tmp_path: Path, name: str, fields: dict, **more):
    base = {"epochs": 3, "sampler": "random", "checkpoint": {"every": 10}, "name": name}
    return make_config(tmp_path, **base | fields | more)


def trajectory(run_dir: Path, unit: str) -> list[tuple[int, float]]:
    events = map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
    return [(e[unit], e["loss"]) for e in events if e["kind"] == unit]


def assert_same_run(full: Path, resumed: Path, unit: str) -> None:
    assert trajectory(resumed, unit) == trajectory(full, unit)  # every one once, same losses
    a, b = final_state_of(full), final_state_of(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["restarts"] == 1
    evals = [e for e in map(json.loads, (resumed / "events.jsonl").read_text().splitlines())]
    full_evals = [e for e in map(json.loads, (full / "events.jsonl").read_text().splitlines())]
    assert [e["accuracy"] for e in evals if e["kind"] == "eval"] == [
        e["accuracy"] for e in full_evals if e["kind"] == "eval"
    ]
    assert moved(resumed) == moved(full)  # the bytes of the lost work are not counted twice


def moved(run_dir: Path) -> dict:
    """Each rank's bytes sent and received, from its comm event."""
    events = map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
    return {e["rank"]: (e["bytes_sent"], e["bytes_recv"]) for e in events if e["kind"] == "comm"}


def final_state_of(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)


@pytest.mark.parametrize("case", list(CASES))
def test_a_worker_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tmp_path, case):
    fields, victim, unit = CASES[case]
    full = run(config(tmp_path, "full", fields)).run_dir
    with pytest.raises(RunFailed, match=f"rank {victim}"):
        # the rank exits at once (os._exit) after step 25, as a killed process does
        run(config(tmp_path, "cut", fields, fault={"rank": victim, "step": 25, "kind": "exit"}))
    cut = tmp_path / "runs" / "cut"
    assert json.loads((cut / "summary.json").read_text())["status"] == "failed"

    resumed = run(config(tmp_path, "cut", fields), resume=cut).run_dir

    assert resumed == cut
    assert_same_run(full, cut, unit)
    assert json.loads((cut / "summary.json").read_text())["resumed_at"] == [20]


ARGS = ["--dataset", "synthetic", "--model", "mlp", "--sampler", "random", "--quiet"]
LONG = ["--epochs", "40", "--set", "checkpoint.every=50"]


@pytest.mark.parametrize("workers", [1, 2], ids=["centralized", "allreduce"])
def test_a_command_killed_with_sigkill_resumes_from_its_checkpoint(tmp_path, workers):
    strategy = ["--strategy", "centralized" if workers == 1 else "allreduce"]
    args = [*ARGS, *LONG, *strategy, "--workers", str(workers)]

    done, full = kill_then_resume(tmp_path, args, workers)

    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert full.returncode == 0, full.stderr
    assert_same_run(tmp_path / "full", tmp_path / "cut", "step")


def kill_then_resume(tmp_path: Path, args: list[str], world: int):
    """`distlab run ARGS` as run "cut", SIGKILLed once two checkpoints are complete (no
    process may be left), then `--resume`d; and the same run uninterrupted as "full".
    Returns both commands' CompletedProcess."""
    where = ["--out-dir", str(tmp_path)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "distlab", "run", *args, *where, "--name", "cut"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    cut = tmp_path / "cut"
    wait_for_checkpoints(cut, world, count=2)
    family = [proc.pid] + [p.pid for p in __import__("psutil").Process(proc.pid).children(True)]
    os.kill(proc.pid, signal.SIGKILL)  # no chance to record anything
    proc.wait(timeout=30)
    assert_no_orphans(family)
    assert not (cut / "summary.json").exists()
    done = cli("run", "--resume", str(cut), "--quiet")
    full = cli("run", *args, *where, "--name", "full")
    return done, full


def wait_for_checkpoints(run_dir: Path, world: int, count: int, deadline: float = 90) -> None:
    """Until `count` checkpoints (of steps or rounds) exist, the newest written by every rank."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        folders = sorted((run_dir / "checkpoints").glob("*-*"))
        if len(folders) >= count and all(
            (folders[-1] / f"rank-{r}.json").exists() for r in range(world)
        ):
            return
        time.sleep(0.02)
    raise AssertionError("no checkpoint was written")


def test_a_damaged_checkpoint_is_passed_over_for_the_one_before_it(tmp_path):
    fields = {"strategy": "allreduce", "workers": 2}
    full = run(config(tmp_path, "full", fields)).run_dir
    with pytest.raises(RunFailed):
        run(config(tmp_path, "cut", fields, fault={"rank": 1, "step": 25, "kind": "exit"}))
    cut = tmp_path / "runs" / "cut"
    newest = cut / "checkpoints" / "step-00000020" / "rank-1.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # cut short

    with pytest.warns(UserWarning, match=r"checkpoint at step 20 is damaged: rank 1's file"):
        run(config(tmp_path, "cut", fields), resume=cut)

    assert_same_run(full, cut, "step")
    assert json.loads((cut / "summary.json").read_text())["resumed_at"] == [10]


def test_resume_refuses_what_cannot_be_resumed_in_one_line(tmp_path):
    fields = {"strategy": "allreduce", "workers": 2}
    done = run(config(tmp_path, "done", fields)).run_dir
    with pytest.raises(RunFailed):
        run(config(tmp_path, "cut", fields, fault={"rank": 1, "step": 25, "kind": "exit"}))
    with pytest.raises(RunFailed):  # a failed run that wrote no checkpoint
        run(make_config(tmp_path, name="plain", fault={"rank": 0, "step": 3}))
    plain = tmp_path / "runs" / "plain"
    cut = tmp_path / "runs" / "cut"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    cases = [
        (["--resume", str(tmp_path)], "is not a run directory (no config.json)"),
        (["--resume", str(done)], "already completed; nothing to resume"),
        (["--resume", str(plain)], "has no checkpoint (a run writes them with --set"),
        (["--resume", str(cut), "--epochs", "5"], "differs from the run's in epochs 3 -> 5"),
        (["--resume", str(cut), "--lr", "0.5"], "optimizer.lr 0.05 -> 0.5"),
    ]
    for args, said in cases:
        out = cli("run", *args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.startswith("error: --resume: ") and said in out.stderr, out.stderr
        assert out.stderr.count("\n") == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_checkpoint_holds_tensors_and_plain_data_only(tmp_path):
    fields = {"strategy": "allreduce", "workers": 2, "optimizer": {"momentum": 0.9}}
    result = run(config(tmp_path, "full", fields))
    files = sorted((result.run_dir / "checkpoints").glob("*/rank-*.pt"))
    assert len(files) == 4  # two checkpoints kept, one file per rank
    state = torch.load(files[-1], weights_only=True)
    assert {"at", "position", "objects", "rng", "recorder", "comm"} <= set(state)
    assert state["objects"]["optimizer"]["state"]  # momentum buffers
    assert final_state(result).keys() == state["objects"]["model"].keys()


def torchrun_elastic(tmp_path: Path, name: str) -> subprocess.Popen:
    """torchrun with one restart allowed, 2 allreduce workers, a checkpoint every 50 steps."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launcher += ["--nproc-per-node", "2", "--max-restarts", "1"]
    where = ["--workers", "2", "--out-dir", str(tmp_path), "--name", name, "--set", "timeout=60"]
    return subprocess.Popen(
        [*launcher, "-m", "distlab", "run", *ARGS, *LONG, "--strategy", "allreduce", *where],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_torchrun_restarts_a_killed_worker_from_the_last_checkpoint(tmp_path):
    full = torchrun_elastic(tmp_path, "full")
    assert full.wait(timeout=300) == 0, full.stderr.read()[-3000:]
    proc = torchrun_elastic(tmp_path, "cut")
    run_dir = tmp_path / "cut"
    wait_for_checkpoints(run_dir, world=2, count=2)
    worker = next(
        e["pid"]
        for e in map(json.loads, (run_dir / "events" / "rank-1.jsonl").read_text().splitlines())
        if e.get("phase") == "start"
    )
    os.kill(worker, signal.SIGKILL)

    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["restarts"] == 1 and len(summary["resumed_at"]) == 1
    assert_same_run(tmp_path / "full", run_dir, "step")


FEDERATED = {
    "vectorized": {"workers": 1},
    "processes": {"workers": 2, "strategy": {"executor": "processes"}},
    "sequential-fedadam": {
        "workers": 1,
        "strategy": {"executor": "sequential", "algorithm": "fedadam", "server_lr": 0.01},
    },
}


@pytest.mark.parametrize("case", list(FEDERATED))
def test_a_federated_run_killed_after_a_checkpoint_resumes_to_the_same_rounds(tmp_path, case):
    fields = dict(FEDERATED[case])
    strategy = {"name": "fedavg", "clients": 6, "clients_per_round": 3, "rounds": 8}
    strategy |= fields.pop("strategy", {})
    base = {"strategy": strategy, "checkpoint": {"every": 2}, "eval_every": 3, **fields}
    full = run(make_config(tmp_path, name="full", **base)).run_dir
    # the server (rank 0) dies in round 5, after the checkpoint of round 4
    fault = {"rank": 0, "step": 5, "kind": "raise"}
    with pytest.raises(RunFailed):
        run(make_config(tmp_path, name="cut", fault=fault, **base))
    cut = tmp_path / "runs" / "cut"

    run(make_config(tmp_path, name="cut", **base), resume=cut)

    assert_same_run(full, cut, "round")
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["resumed_at"] == [4]
