"""A dead, failing or stuck rank ends the run with an error naming it, and leaves no process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import assert_no_orphans, cli

ARGS = [
    "run",
    "--dataset",
    "synthetic",
    "--model",
    "mlp",
    "--strategy",
    "allreduce",
    "--workers",
    "2",
    "--epochs",
    "200",
    "--quiet",
]


def start(tmp_path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "distlab", *ARGS, "--out-dir", str(tmp_path), "--name", "r", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def rank_pid(tmp_path: Path, rank: int, deadline: float = 60) -> int:
    """Wait until the rank has written some steps, then return its pid."""
    path = tmp_path / "r" / "events" / f"rank-{rank}.jsonl"
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if path.exists():
            events = [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]
            starts = [e for e in events if e.get("phase") == "start"]
            if starts and (rank != 0 or any(e["kind"] == "step" for e in events)):
                return starts[0]["pid"]
        time.sleep(0.1)
    raise AssertionError(f"rank {rank} never started")


def finish(proc: subprocess.Popen, limit: float = 30) -> tuple[int, str, float]:
    begin = time.monotonic()
    _, err = proc.communicate(timeout=limit + 30)
    return proc.returncode, err, time.monotonic() - begin


def read_summary(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "r" / "summary.json").read_text())


def assert_error_recorded(summary: dict, err: str) -> None:
    """summary.json names the same cause as the one line on stderr, and keeps the ranks' own
    messages apart from it (no bare exit codes of ranks that were stopped)."""
    assert err.strip() == f"error: run failed: {summary['error']}"
    assert "errors" not in summary
    for entry in summary["rank_errors"]:
        assert set(entry) == {"rank", "message"}
        assert "143" not in entry["message"]


def test_sigkill_of_a_worker_names_the_rank(tmp_path):
    proc = start(tmp_path)
    rank_pid(tmp_path, 0)
    victim = rank_pid(tmp_path, 1)
    other = rank_pid(tmp_path, 0)
    os.kill(victim, signal.SIGKILL)
    code, err, seconds = finish(proc)
    assert code == 1
    assert seconds < 30
    assert "rank 1" in err and "SIGKILL" in err
    assert_no_orphans([victim, other])
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed"
    assert summary["steps"] > 0  # events written before the failure are kept
    assert summary["error"] == "rank 1 died (killed by SIGKILL)"
    assert_error_recorded(summary, err)
    assert all(e["rank"] != 1 for e in summary["rank_errors"])  # the dead rank said nothing


def test_a_rank_that_raises_is_named(tmp_path):
    proc = start(tmp_path, "--set", "fault.rank=1", "--set", "fault.step=5")
    code, err, seconds = finish(proc)
    assert code == 1
    assert "rank 1 failed: RuntimeError: injected fault at step 5" in err
    assert len(err.strip().splitlines()) == 1
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed"
    assert summary["error"] == "rank 1 failed: RuntimeError: injected fault at step 5"
    assert_error_recorded(summary, err)
    own = {"rank": 1, "message": "RuntimeError: injected fault at step 5"}
    assert own in summary["rank_errors"]


def test_a_rank_that_exits_at_once_is_named(tmp_path):
    proc = start(
        tmp_path, "--set", "fault.rank=1", "--set", "fault.step=4", "--set", "fault.kind=exit"
    )
    code, err, seconds = finish(proc)
    assert code == 1
    assert seconds < 30
    # the exit code alone would read as a crash: the message says the fault was injected
    said = "rank 1 exited with code 3 (injected fault: fault.kind=exit at step 4)"
    assert said in err
    summary = read_summary(tmp_path)
    assert summary["error"] == said
    assert_error_recorded(summary, err)
    assert json.loads((tmp_path / "r" / "fault.json").read_text()) == {
        "rank": 1, "step": 4, "kind": "exit", "attempt": 0
    }  # fmt: skip


def test_a_stuck_rank_is_named_after_the_collective_timeout(tmp_path):
    proc = start(
        tmp_path,
        "--set",
        "fault.rank=1",
        "--set",
        "fault.step=3",
        "--set",
        "fault.kind=hang",
        "--set",
        "timeout=4",
    )
    pids = [rank_pid(tmp_path, 0), rank_pid(tmp_path, 1)]
    code, err, seconds = finish(proc)
    assert code == 1
    assert seconds < 30
    assert "rank 1 is stuck" in err
    assert_no_orphans(pids)
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed"
    assert summary["error"].startswith("rank 1 is stuck: no response within the 4 s")
    assert summary["error"].endswith("(injected fault: fault.kind=hang at step 3)")
    assert_error_recorded(summary, err)
    assert all(e["rank"] != 1 for e in summary["rank_errors"])  # the stuck rank said nothing


def test_ctrl_c_stops_every_process_and_marks_the_run(tmp_path):
    proc = start(tmp_path)
    pids = [rank_pid(tmp_path, 0), rank_pid(tmp_path, 1)]
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    code, err, _ = finish(proc)
    assert code == 130
    assert "interrupted" in err
    assert_no_orphans(pids)
    summary = read_summary(tmp_path)
    assert summary["status"] == "interrupted"
    # stopping the ranks is no error of theirs: no list of their exit codes
    assert not {"error", "errors", "rank_errors"} & set(summary)


def test_killing_the_parent_leaves_no_workers(tmp_path):
    proc = start(tmp_path)
    pids = [rank_pid(tmp_path, 0), rank_pid(tmp_path, 1)]
    proc.kill()
    proc.communicate(timeout=30)
    assert_no_orphans(pids)


# 2 workers, 3 epochs of 32 steps, a checkpoint every 10 steps; rank 1 exits after step 25.
CUT = [
    "run", "--dataset", "synthetic", "--model", "mlp", "--strategy", "allreduce",
    "--workers", "2", "--epochs", "3", "--sampler", "random", "--quiet",
    "--set", "checkpoint.every=10", "--set", "timeout=60",
]  # fmt: skip
FAULT = ["--set", "fault.rank=1", "--set", "fault.step=25", "--set", "fault.kind=exit"]
INJECTED = "rank 1 exited with code 3 (injected fault: fault.kind=exit at step 25)"


def cut_run(tmp_path: Path) -> Path:
    done = cli(*CUT, *FAULT, "--out-dir", str(tmp_path), "--name", "cut")
    assert done.returncode == 1 and INJECTED in done.stderr, done.stderr
    return tmp_path / "cut"


@pytest.mark.slow
def test_a_resumed_run_goes_on_past_the_fault_that_fired(tmp_path):
    cut = cut_run(tmp_path)

    # flags that change nothing the run computes, none of them fault.*: the fault is left out
    done = cli("run", "--resume", str(cut), "--quiet", "--set", "threads=1")

    assert done.returncode == 0, done.stderr
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_at"] == [20]
    assert summary["steps"] == 3 * 32


@pytest.mark.slow
def test_a_resume_that_gives_the_fault_again_fires_it_again(tmp_path):
    cut = cut_run(tmp_path)

    again = cli("run", "--resume", str(cut), "--quiet", *FAULT)
    plain = cli("run", "--resume", str(cut), "--quiet")  # the API's path: the run's own config

    assert again.returncode == 1 and INJECTED in again.stderr, again.stderr
    assert plain.returncode == 0, plain.stderr
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_at"] == [20]


@pytest.mark.slow
def test_torchrun_restarts_past_the_fault_that_fired(tmp_path):
    # Every restart runs the same command, --set fault.* included: the fault fires in the
    # first attempt only, so one restart is enough to finish the run.
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launcher += ["--nproc-per-node", "2", "--max-restarts", "1"]

    done = subprocess.run(
        [*launcher, "-m", "distlab", *CUT, *FAULT, "--out-dir", str(tmp_path), "--name", "t"],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_at"] == [20]
    assert json.loads((tmp_path / "t" / "fault.json").read_text())["attempt"] == 0
