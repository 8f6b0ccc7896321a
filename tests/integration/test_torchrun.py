"""The same entry point joins processes started by torchrun: one record, one voice (rank 0
prints, the other ranks stay quiet), the same checks and failure reports as local runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from tests.conftest import run_small, step_losses

from distlab.runs.events import read_events


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


def distlab_lines(stderr: str) -> list[str]:
    """What distlab itself wrote to stderr: its `error:` lines and any traceback of its code
    (torchrun adds a report and a traceback of its own when a worker exits non-zero)."""
    ours = [line for line in stderr.splitlines() if line.startswith("error: ")]
    frames = [line for line in stderr.splitlines() if 'File "' in line and "distlab" in line]
    return ours + frames


@pytest.fixture(scope="module")
def json_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tr")
    done = torchrun(
        "--workers", "2", "--out-dir", str(out), "--name", "j", "--json",
        "--set", "threads=3", "--set", "timeout=30",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done, out / "j"


def test_torchrun_json_is_one_document_from_rank_0(json_run):
    done, run_dir = json_run
    summary = json.loads(done.stdout)  # one document: the other rank printed nothing
    assert summary["status"] == "completed"
    assert summary["run_dir"] == str(run_dir)


def test_torchrun_applies_the_thread_setting(json_run):
    _, run_dir = json_run
    starts = [e for e in read_events(run_dir / "events.jsonl") if e.get("phase") == "start"]
    assert [e["threads"] for e in starts] == [3, 3]


def test_torchrun_writes_the_partition_record(json_run):
    _, run_dir = json_run
    record = json.loads((run_dir / "partition.json").read_text())
    assert len(record["sizes"]) == 2
    assert (run_dir / "partition.png").is_file()


def test_torchrun_with_an_existing_name_fails_on_every_rank_in_one_line(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "config.json").write_text("{}")  # an earlier run

    done = torchrun("--workers", "2", "--out-dir", str(tmp_path), "--name", "t")

    assert done.returncode != 0 and done.stdout == ""
    expected = f"error: run directory '{tmp_path / 't'}' exists (use --overwrite to replace it)"
    assert distlab_lines(done.stderr) == [expected]
    # torchrun's report has one entry per failed rank: each exited 2 (bad input), unless
    # torchrun's SIGTERM, sent when the first one ended, came before a rank's own exit
    codes = re.findall(r"^\s+exitcode\s+:\s+(-?\d+)", done.stderr, re.MULTILINE)
    assert "2" in codes and set(codes) <= {"2", "-15"}, codes
    assert torchrun_root_cause(done.stderr) == expected
    assert (tmp_path / "t" / "config.json").read_text() == "{}"


def torchrun_root_cause(stderr: str) -> str:
    """What torchrun's ChildFailedError report gives as the root cause's traceback: the
    error file a failed worker left (TORCHELASTIC_ERROR_FILE), else a link to torch's docs."""
    root = stderr.split("Root Cause (first observed failure):", 1)[1]
    return re.search(r"^\s+traceback : (.*)$", root, re.MULTILINE)[1]


def test_torchrun_failure_on_rank_1_is_recorded_by_rank_0(tmp_path):
    fault = ["--set", "fault.rank=1", "--set", "fault.step=20", "--set", "timeout=30"]

    done = torchrun(
        "--workers", "2", "--epochs", "200", "--out-dir", str(tmp_path), "--name", "f", *fault
    )

    assert done.returncode != 0 and done.stdout == ""
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"] == "rank 1 failed: RuntimeError: injected fault at step 20"
    assert distlab_lines(done.stderr) == [f"error: run failed: {summary['error']}"]
    # torchrun's own report follows; it names distlab's cause, not a link to torch's docs
    assert torchrun_root_cause(done.stderr) == f"error: run failed: {summary['error']}"
    assert {"rank": 1, "message": "RuntimeError: injected fault at step 20"} in summary[
        "rank_errors"
    ]
    assert summary["steps"] >= 19  # rank 0's events up to the failure are kept


@pytest.mark.parametrize(
    "strategy",
    [
        {"name": "local-sgd", "period": 4},
        {"name": "pipeline", "schedule": "gpipe", "microbatches": 4},
    ],
    ids=["local-sgd", "pipeline"],
)
def test_torchrun_runs_the_newer_strategies_as_spawn_does(tmp_path, strategy):
    sets = [f"strategy.{k}={v}" for k, v in strategy.items() if k != "name"]
    args = ["--strategy", strategy["name"], "--workers", "2", "--out-dir", str(tmp_path / "tr")]
    args += ["--name", "t", "--set", "timeout=60", *[a for s in sets for a in ("--set", s)]]

    done = torchrun(*args)

    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = tmp_path / "tr" / "t"
    summary = json.loads((run_dir / "summary.json").read_text())
    lead = summary["lead_rank"]
    events = read_events(run_dir / "events.jsonl")
    launched = [e["loss"] for e in events if e["kind"] == "step" and e["rank"] == lead]
    local = run_small(tmp_path, strategy=strategy, workers=2)
    spawned = [e["loss"] for e in local.events if e["kind"] == "step" and e["rank"] == lead]
    assert summary["status"] == "completed" and len(launched) == len(spawned) > 0
    assert max(abs(a - b) for a, b in zip(spawned, launched, strict=True)) < 1e-5
