"""distlab.run with several processes from a program that has no script file for the
workers to import again: one read from stdin (`python - <<EOF`, `python < script.py`) runs
as a notebook's does, and a strategy defined in such a program is refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.conftest import REPO

RUN = """
import distlab

result = distlab.run({"strategy": "allreduce", "workers": 2, "epochs": 1,
                      "dataset": "synthetic", "model": "mlp", "out_dir": "runs"})
print(result.summary["status"], result.summary["processes"], result.run_dir)
"""


def python_stdin(args: list[str], script: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python ARGS` with the script on its standard input, as a shell's heredoc gives it."""
    return subprocess.run(
        [sys.executable, *args],
        input=textwrap.dedent(script),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.mark.parametrize("args", [["-"], []], ids=["python-dash", "python-redirect"])
def test_a_program_read_from_stdin_runs_two_workers(tmp_path, args):
    done = python_stdin(args, RUN, tmp_path)

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "<stdin>" not in done.stderr, done.stderr
    status, processes, run_dir = done.stdout.split()
    assert (status, processes) == ("completed", "2")
    summary = json.loads((tmp_path / run_dir / "summary.json").read_text())
    assert summary["final_accuracy"] > 0.5


def test_a_strategy_defined_in_a_program_from_stdin_is_refused_in_one_line(tmp_path):
    script = """
    import distlab
    from distlab.strategies import register
    from tests.integration.test_toy_strategy import SPEC  # now an attribute of __main__

    register("toy-average", "__main__:SPEC")
    distlab.run({"strategy": "toy-average", "workers": 2, "dataset": "synthetic",
                 "model": "mlp", "out_dir": "runs"})
    """

    done = python_stdin(["-"], script, tmp_path)

    assert done.returncode == 1 and done.stdout == ""
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        "ValueError: __main__:SPEC is defined in the main program (<stdin>), which the worker "
        "processes cannot import: move it to a module file and register it under that "
        "module's name"
    )
    assert done.stderr.count("Traceback") == 1  # the caller's own, nothing from a worker
    assert not (tmp_path / "runs").exists()  # refused before anything was written
