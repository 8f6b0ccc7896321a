"""Speedups from real runs that the report must not pass off as scaling: a one-process
baseline slowed by another program on its core, and a baseline with other torch threads
per process than the runs it is compared with (the 14x "speedup" of 2 workers on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from tests.conftest import cli

from distlab.experiments.report import write_report

pytestmark = pytest.mark.slow

TINY = ["--dataset", "synthetic", "--model", "mlp", "--epochs", "2", "--batch-size", "16"]

# A program that takes CPU 0 for 3 ms of every 9 ms: a step (under a millisecond here) that
# falls in its busy part waits for it, the others run at full speed, as under a busy
# machine's other jobs.
HOG = textwrap.dedent(
    """
    import os, time
    os.sched_setaffinity(0, {0})
    end = time.monotonic() + 120
    while time.monotonic() < end:
        busy = time.monotonic() + 0.003
        while time.monotonic() < busy:
            pass
        time.sleep(0.006)
    """
)


def run_cli(tmp_path, name, *args, pinned=False):
    """`distlab run` in a subprocess; `pinned`: on CPU 0 at the lowest priority, so the hog
    there takes the CPU whenever it wants it."""
    prefix = ["--out-dir", str(tmp_path / "runs"), "--name", name, "--quiet"]
    if pinned:
        command = [
            sys.executable, "-c",
            "import os, sys; os.sched_setaffinity(0, {0}); os.nice(19); "
            "from distlab.__main__ import main; sys.argv[0] = 'distlab'; main()",
            "run", *prefix, *TINY, *args,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    else:
        done = cli("run", *prefix, *TINY, *args, timeout=300)
    assert done.returncode == 0, done.stderr
    return tmp_path / "runs" / name


def test_a_baseline_slowed_by_another_program_is_flagged(tmp_path):
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        pytest.skip("needs CPU affinity and two cores")
    hog = subprocess.Popen([sys.executable, "-c", HOG])
    try:
        busy = run_cli(tmp_path, "busy", "--set", "threads=1", pinned=True)
    finally:
        hog.kill()
        hog.wait()
    quiet = run_cli(tmp_path, "two", "--strategy", "allreduce", "--workers", "2",
                    "--set", "threads=1")  # fmt: skip

    rows = write_report([busy, quiet], tmp_path / "report", baseline="centralized")

    summary = json.loads((busy / "summary.json").read_text())
    spread = summary["time_per_unit"]
    assert spread["unit"] == "step" and spread["p90"] > 3 * spread["median"], spread
    env = summary["environment"]
    assert env["load_start"] is not None
    # the hog took a third of a core while the run went on: counted as other programs' cores
    assert 0.1 < env["other_cores"] < 1.0, env
    by_run = {r["run"]: r for r in rows}
    assert by_run["busy"]["disturbed"] and "step time p90" in by_run["busy"]["flags"]
    assert "baseline busy disturbed: step time p90" in by_run["two"]["flags"]
    page = (tmp_path / "report" / "report.md").read_text()
    assert "baseline busy disturbed" in page


def test_a_baseline_with_other_threads_gets_no_speedup(tmp_path):
    two_threads = run_cli(tmp_path, "one", "--set", "threads=2")
    workers = run_cli(tmp_path, "two", "--strategy", "allreduce", "--workers", "2",
                      "--set", "threads=1")  # fmt: skip

    done = cli("report", str(two_threads), str(workers), "--out", str(tmp_path / "rep"),
               "--baseline", "centralized")  # fmt: skip

    assert done.returncode == 0, done.stderr
    rows = {r["run"]: r for r in json.loads((tmp_path / "rep" / "summary.json").read_text())}
    assert rows["two"]["speedup"] is None
    said = "used 2 torch threads per process and this run 1: not comparable"
    assert said in rows["two"]["speedup_note"]
    assert f"two: the one-process run one {said}" in done.stdout
