"""How a run's processes come together: ranks start training at once, a script that forgets
the main guard gets one clear error, and missing peers at a launcher's rendezvous are
counted in one line."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.conftest import REPO, cli, make_config, run_small

from distlab.api import run


@pytest.mark.parametrize(
    "fields",
    [
        {"strategy": "allreduce", "workers": 2},
        # the processes executor: the server on rank 0, clients hosted on ranks 1 and 2
        {"strategy": {"name": "fedavg", "clients": 2, "rounds": 3}, "workers": 2},
    ],
    ids=["allreduce", "fedavg-processes"],
)
def test_ranks_start_training_together(tmp_path, fields):
    seen = []

    result = run(make_config(tmp_path, **fields), on_event=seen.append)

    events, processes = result.events, result.summary["processes"]
    starts = [e["seconds"] for e in events if e.get("phase") == "start"]
    trains = [e["seconds"] for e in events if e.get("phase") == "train"]
    assert len(starts) == processes
    # No rank's training clock starts before every rank is up (the barrier between them).
    assert max(starts) <= min(trains)
    # What a launcher display shows while the processes come up.
    assert [e["text"] for e in seen if e["kind"] == "status"] == [
        "loading data",
        f"starting {processes} processes",
        f"waiting for {processes} processes to join",
        "training",
    ]


def test_first_step_does_not_absorb_the_start_of_other_processes(tmp_path):
    result = run_small(tmp_path, strategy="allreduce", workers=2, epochs=2)

    durations = [e["duration"] for e in result.events if e["kind"] == "step"]
    median = statistics.median(durations)
    # A floor of 50 ms keeps a busy machine's scheduling hiccup from failing the test; the
    # wait for peers it guards against took seconds.
    assert durations[0] < 10 * median + 0.05, (durations[:3], median)


def test_script_without_main_guard_gets_one_error_naming_the_fix(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            import distlab

            result = distlab.run({"strategy": "allreduce", "workers": 2, "epochs": 1,
                                  "dataset": "synthetic", "model": "mlp", "out_dir": "runs"})
            print(result.run_dir)
            """
        )
    )

    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )

    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    # the parent's own traceback (the frames from the script down to the launcher), and
    # nothing from the workers: before the guard, 134 lines came out of them
    assert len(lines) < 25 and "spawn_main" not in done.stderr, done.stderr
    assert lines[-1].startswith("distlab.runtime.failures.MainNotGuarded: ")
    assert 'call distlab.run under `if __name__ == "__main__":`' in lines[-1]
    assert str(script) in lines[-1]
    assert done.stderr.count("Traceback") == 1
    assert list((tmp_path / "runs").iterdir()) == []  # no run directory left behind


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_missing_peers_at_a_slurm_rendezvous_are_counted_in_one_line(tmp_path):
    env = {"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "MASTER_PORT": str(free_port())}
    args = ["--strategy", "allreduce", "--workers", "2", "--dataset", "synthetic", "--model", "mlp"]

    done = cli("run", *args, "--out-dir", "runs", "--set", "timeout=3", cwd=tmp_path, env=env)

    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        "error: run failed: rendezvous timed out: 1 of 2 processes joined within 3 s\n"
    )
    assert not Path(tmp_path / "runs").exists()  # nothing was written
