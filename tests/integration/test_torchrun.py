"""The same entry point joins processes started by torchrun."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import run_small, step_losses


def test_torchrun_runs_the_same_computation(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "distlab",
        "run",
        "--strategy",
        "allreduce",
        "--workers",
        "2",
        "--dataset",
        "synthetic",
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--quiet",
        "--out-dir",
        str(tmp_path / "tr"),
        "--name",
        "t",
        "--set",
        "timeout=60",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "tr" / "t" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["processes"] == 2
    events = [
        json.loads(x) for x in (tmp_path / "tr" / "t" / "events.jsonl").read_text().splitlines()
    ]
    torchrun_losses = [e["loss"] for e in events if e["kind"] == "step" and e["rank"] == 0]
    local = step_losses(run_small(tmp_path, strategy="allreduce", workers=2))
    assert max(abs(a - b) for a, b in zip(local, torchrun_losses, strict=True)) < 1e-5


def test_torchrun_with_the_wrong_process_count_is_refused(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "distlab",
        "run",
        "--strategy",
        "allreduce",
        "--workers",
        "3",
        "--dataset",
        "synthetic",
        "--model",
        "mlp",
        "--quiet",
        "--out-dir",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode != 0
    assert (
        "the launcher started 2 processes but strategy allreduce with --workers 3 needs 3"
        in done.stderr
    )
