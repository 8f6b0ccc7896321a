"""`distlab sweep` and `distlab compare` on real runs: a grid of cells into one directory
each, a failed cell recorded while the others go on, and a killed sweep resumed without
redoing finished cells."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from tests.conftest import assert_no_orphans, cli

TINY = ["--dataset", "synthetic", "--model", "mlp", "--epochs", "1"]


def test_acceptance_command_runs_every_cell_into_its_own_run_directory(tmp_path):
    done = cli(
        "sweep", "--name", "S", "--out-dir", str(tmp_path), "--grid",
        "strategy=allreduce,param-server", "--grid", "workers=1,2", *TINY, timeout=300,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-2000:]
    root = tmp_path / "S"
    record = json.loads((root / "sweep.json").read_text())
    names = [c["name"] for c in record["cells"]]
    assert names == [
        "allreduce_workers-1",
        "allreduce_workers-2",
        "param-server_workers-1",
        "param-server_workers-2",
    ]
    for cell in record["cells"]:
        summary = json.loads((root / cell["name"] / "summary.json").read_text())
        config = json.loads((root / cell["name"] / "config.json").read_text())
        assert cell["status"] == summary["status"] == "completed"
        assert config["strategy"]["name"] == cell["values"]["strategy.name"]
        assert config["workers"] == summary["workers"] == cell["values"]["workers"]
        assert config["epochs"] == 1 and config["dataset"] == "synthetic"  # the base flags
    assert all(f"completed: {n}" in done.stderr for n in names)  # a line per cell


def sweep_command(tmp_path: Path, seeds: str = "0,1,2") -> list[str]:
    # Three cells of a few seconds each: the second is killed while it trains.
    return [
        sys.executable, "-m", "distlab", "sweep", "--name", "K", "--out-dir", str(tmp_path),
        "--grid", f"seed={seeds}", "--epochs", "80", "--dataset", "synthetic", "--model", "mlp",
        "--set", "threads=1",
    ]  # fmt: skip


def wait_for_status(root: Path, cell: str, status: str, deadline: float = 120) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            cells = json.loads((root / "sweep.json").read_text())["cells"]
        except (OSError, ValueError):
            cells = []
        if any(c["name"] == cell and c["status"] == status for c in cells):
            return
        if status == "running" and (root / cell / "events").is_dir():
            return
        time.sleep(0.1)
    raise AssertionError(f"cell {cell} never reached {status}")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "sigint"])
def test_a_killed_sweep_resumes_without_redoing_finished_cells(tmp_path, how):
    root = tmp_path / "K"
    proc = subprocess.Popen(sweep_command(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for_status(root, "seed-0", "completed")
    wait_for_status(root, "seed-1", "running")
    time.sleep(1.0)  # the cell is training
    family = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(how)
    _, stderr = proc.communicate(timeout=90)
    assert_no_orphans(family)
    if how == signal.SIGINT:
        assert proc.returncode == 130
        assert "error: sweep K interrupted: 1 of 3 cells finished; rerun the same" in stderr
    first = (root / "seed-0" / "summary.json").stat().st_mtime_ns
    killed = json.loads((root / "seed-1" / "summary.json").read_text())
    assert killed["status"] in ("terminated", "interrupted")  # recorded, not counted done

    other = sweep_command(tmp_path, seeds="0,1,3")
    again = subprocess.run(other, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "exists with other cells" in again.stderr  # another plan

    again = subprocess.run(sweep_command(tmp_path), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "finished before: seed-0" in again.stderr
    assert (root / "seed-0" / "summary.json").stat().st_mtime_ns == first  # not redone
    for cell in ("seed-1", "seed-2"):
        assert json.loads((root / cell / "summary.json").read_text())["status"] == "completed"


def test_a_failed_cell_is_recorded_and_the_others_go_on(tmp_path):
    # the fault in the two-worker cell alone: a one-process cell has no rank 1 to fail
    sweep_file = tmp_path / "f.json"
    sweep_file.write_text(json.dumps({"cells": [
        {"workers": 2, "fault.rank": 1, "fault.step": 3}, {"workers": 1},
    ]}))  # fmt: skip
    done = cli(
        "sweep", "--name", "F", "--out-dir", str(tmp_path), "--file", str(sweep_file),
        "--strategy", "allreduce", *TINY, "--set", "timeout=30",
    )  # fmt: skip

    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: run failed: sweep F: 1 of 2 cells failed (first: workers-2_rank-1_step-3: "
        "rank 1 failed: RuntimeError: injected fault at step 3)"
    )
    cells = json.loads((tmp_path / "F" / "sweep.json").read_text())["cells"]
    assert [c["status"] for c in cells] == ["failed", "completed"]
    assert cells[0]["error"] == "rank 1 failed: RuntimeError: injected fault at step 3"


def test_compare_runs_seed_000s_strategies_and_writes_the_report(tmp_path):
    done = cli("compare", "--epochs", "1", "--out-dir", str(tmp_path), "--name", "C", timeout=400)

    assert done.returncode == 0, done.stderr[-2000:]
    root = tmp_path / "C"
    cells = [c["name"] for c in json.loads((root / "sweep.json").read_text())["cells"]]
    configs = [json.loads((root / c / "config.json").read_text()) for c in cells]
    assert [c["strategy"]["name"] for c in configs] == [
        "centralized", "allreduce", "param-server", "fedavg", "fedavg"
    ]  # fmt: skip
    assert [c["partition"]["scheme"] for c in configs[3:]] == ["iid", "dirichlet"]
    assert configs[4]["partition"]["alpha"] == 0.1
    assert [c["workers"] for c in configs] == [1, 2, 2, 2, 2]
    assert all(c["epochs"] == 1 for c in configs)
    report = (root / "report" / "report.md").read_text()
    assert report.count("| completed |") == 5
    assert (root / "report" / "report.html").is_file()
