"""The same entry point joins processes started by torchrun."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import run_small, step_losses

from distlab.metrics import read_events


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 -m distlab run ARGS` on tiny data."""
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    data = ["--dataset", "synthetic", "--model", "mlp", "--epochs", "1", "--quiet"]
    cmd = [*launcher, "-m", "distlab", "run", "--strategy", "allreduce", *data, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_torchrun_runs_the_same_computation(tmp_path):
    done = torchrun(
        "--workers", "2", "--out-dir", str(tmp_path / "tr"), "--name", "t", "--set", "timeout=60"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = tmp_path / "tr" / "t"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["processes"] == 2
    events = read_events(run_dir / "events.jsonl")
    torchrun_losses = [e["loss"] for e in events if e["kind"] == "step" and e["rank"] == 0]
    local = step_losses(run_small(tmp_path, strategy="allreduce", workers=2))
    assert max(abs(a - b) for a, b in zip(local, torchrun_losses, strict=True)) < 1e-5


def test_torchrun_with_the_wrong_process_count_is_refused(tmp_path):
    done = torchrun("--workers", "3", "--out-dir", str(tmp_path))
    assert done.returncode != 0
    expected = "the launcher started 2 processes but strategy allreduce with --workers 3 needs 3"
    assert expected in done.stderr
    assert not any(tmp_path.iterdir())  # refused before anything was written
