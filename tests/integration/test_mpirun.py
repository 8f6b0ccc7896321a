"""The same entry point joins processes started by Open MPI's mpirun: ranks come from
OMPI_COMM_WORLD_*, the store from MASTER_ADDR/MASTER_PORT, and the run is the one a local
launch gives, for allreduce, local SGD and the pipeline."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
from tests.conftest import run_small

from distlab.runs.events import read_events

pytestmark = pytest.mark.skipif(
    shutil.which("mpirun") is None, reason="needs mpirun: install Debian's openmpi-bin"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mpirun(*args: str, quiet: bool = True, export: dict | None = None):
    """`mpirun -np 2 python -m distlab run ARGS` on tiny data, on this machine; `export`
    sets variables in the ranks (mpirun -x NAME=VALUE)."""
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        # CI runs as root in a container; Open MPI refuses root without these.
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMPI_MCA_rmaps_base_oversubscribe": "1",
    }
    exports = [a for k, v in (export or {}).items() for a in ("-x", f"{k}={v}")]
    launcher = ["mpirun", "-np", "2", "-x", "MASTER_ADDR", "-x", "MASTER_PORT", *exports,
                sys.executable]  # fmt: skip
    data = ["--dataset", "synthetic", "--model", "mlp", "--epochs", "1"]
    data += ["--quiet"] if quiet else []
    cmd = [*launcher, "-m", "distlab", "run", "--workers", "2", *data, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)


@pytest.mark.parametrize(
    "strategy",
    [
        {"name": "allreduce"},
        {"name": "local-sgd", "period": 4},
        {"name": "pipeline", "schedule": "1f1b", "microbatches": 4},
    ],
    ids=["allreduce", "local-sgd", "pipeline"],
)
def test_mpirun_runs_each_strategy_as_spawn_does(tmp_path, strategy):
    sets = [f"strategy.{k}={v}" for k, v in strategy.items() if k != "name"]
    args = ["--strategy", strategy["name"], "--out-dir", str(tmp_path / "mpi"), "--name", "m"]
    args += ["--set", "timeout=60", *[a for s in sets for a in ("--set", s)]]

    done = mpirun(*args)

    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = tmp_path / "mpi" / "m"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["processes"] == 2
    lead = summary["lead_rank"]
    launched = [
        e["loss"] for e in read_events(run_dir / "events.jsonl")
        if e["kind"] == "step" and e["rank"] == lead
    ]  # fmt: skip
    local = run_small(tmp_path, strategy=strategy, workers=2)
    spawned = [e["loss"] for e in local.events if e["kind"] == "step" and e["rank"] == lead]
    assert len(launched) == len(spawned) > 0
    assert max(abs(a - b) for a, b in zip(spawned, launched, strict=True)) < 1e-5


def test_mpirun_with_bad_input_stops_every_rank_with_one_line(tmp_path):
    bad = ["--strategy", "local-sgd", "--set", "strategy.period=0"]
    done = mpirun(*bad, "--out-dir", str(tmp_path))

    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "strategy.period" in errors[0], done.stderr[-2000:]
    assert not any(tmp_path.iterdir())


def test_output_redirected_from_mpirun_carries_no_terminal_codes(tmp_path):
    """mpirun hands each rank a pseudo-terminal (isatty() is true) and TERM=xterm even when
    its own output goes to a file or a pipe, as here: the summary must be plain text. Where
    FORCE_COLOR asks for codes, NO_COLOR still keeps colour out."""
    where = ("--strategy", "allreduce", "--out-dir", str(tmp_path), "--set", "timeout=60")

    plain = mpirun("--name", "plain", *where, quiet=False)
    forced = mpirun("--name", "forced", *where, quiet=False,
                    export={"FORCE_COLOR": "1", "NO_COLOR": "1"})  # fmt: skip

    assert plain.returncode == 0 and forced.returncode == 0, plain.stderr + forced.stderr
    assert "run summary" in plain.stdout and "completed" in plain.stdout
    assert "\x1b" not in plain.stdout + plain.stderr, repr(plain.stdout[:300])
    codes = re.findall(r"\x1b\[([0-9;]*)m", forced.stdout)
    assert codes, "FORCE_COLOR gives terminal codes (bold): the check above can see them"
    colours = [p for c in codes for p in c.split(";") if p and (30 <= int(p) <= 49 or int(p) >= 90)]
    assert not colours, colours
