"""SIGTERM (kill, timeout, scancel, docker stop) and SIGINT stop `distlab run` cleanly: every
process stopped, the events merged, summary.json written, one line on stderr."""

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

from distlab.runs.events import read_events

ARGS = ["run", "--dataset", "synthetic", "--model", "mlp", "--epochs", "300", "--quiet"]


def start(tmp_path: Path, workers: int) -> subprocess.Popen:
    strategy = "centralized" if workers == 1 else "allreduce"
    return subprocess.Popen(
        [sys.executable, "-m", "distlab", *ARGS, "--strategy", strategy, "--workers", str(workers)]
        + ["--out-dir", str(tmp_path), "--name", "r"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_steps(run_dir: Path, workers: int, deadline: float = 60) -> list[int]:
    """Wait until every rank has started and rank 0 has written steps; return the ranks' pids."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        events = [e for r in range(workers) for e in rank_events(run_dir, r)]
        pids = [e["pid"] for e in events if e.get("phase") == "start"]
        if len(pids) == workers and any(e["kind"] == "step" for e in events):
            return pids
        time.sleep(0.1)
    raise AssertionError("the run never reached its first steps")


def rank_events(run_dir: Path, rank: int) -> list[dict]:
    path = run_dir / "events" / f"rank-{rank}.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]


STOPS = [
    (signal.SIGTERM, 143, "terminated", "terminated by SIGTERM"),
    (signal.SIGINT, 130, "interrupted", "interrupted"),
]


@pytest.mark.parametrize("workers", [1, 2], ids=["inline", "2-processes"])
@pytest.mark.parametrize(("sig", "code", "status", "said"), STOPS, ids=["sigterm", "sigint"])
def test_a_signal_to_the_command_stops_and_records_the_run(
    tmp_path, workers, sig, code, status, said
):
    proc = start(tmp_path, workers)
    run_dir = tmp_path / "r"
    pids = wait_for_steps(run_dir, workers)

    os.kill(proc.pid, sig)  # the main process only, as kill, timeout and docker stop do
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == code
    assert err == f"error: {said}; partial run kept in {run_dir}\n"
    assert_no_orphans([proc.pid, *pids])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == status
    assert summary["steps"] > 0
    assert not {"error", "rank_errors"} & set(summary)
    merged = read_events(run_dir / "events.jsonl")
    assert len(merged) == sum(len(rank_events(run_dir, r)) for r in range(workers))
    assert {e["rank"] for e in merged} == set(range(workers))
    shown = cli("show", str(run_dir))
    assert shown.returncode == 0, shown.stderr
    assert status in shown.stdout


def test_sigterm_to_every_process_is_a_termination_not_a_failure(tmp_path):
    """Slurm's scancel signals every process of the step, the workers included."""
    proc = start(tmp_path, 2)
    run_dir = tmp_path / "r"
    pids = wait_for_steps(run_dir, 2)

    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == 143
    assert err == f"error: terminated by SIGTERM; partial run kept in {run_dir}\n"
    assert_no_orphans([proc.pid, *pids])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "terminated"
    assert not {"error", "rank_errors"} & set(summary)
