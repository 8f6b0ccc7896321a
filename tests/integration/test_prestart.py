"""Ranks of the spawn launcher are forks of a fork server that imported torch beforehand:
they see the launcher's working directory and environment as they are at launch, not as
they were when the server started, and the `distlab` command starts that server only when
its arguments ask for several local processes."""

from __future__ import annotations

import json
import multiprocessing.forkserver as forkserver
import os
from typing import Literal

import pytest
from tests.conftest import assert_no_orphans, make_config

import distlab
from distlab.runtime.prestart import PRELOAD, preload, wants_processes
from distlab.strategies import STRATEGIES, StrategyBase, StrategySpec, register


class Params(StrategyBase):
    """Each rank records where it runs and what it sees."""

    name: Literal["probe"] = "probe"


def run(ctx, params: Params) -> None:
    ctx.recorder.phase(
        "probe",
        cwd=os.getcwd(),
        marker=os.environ.get("DISTLAB_PROBE"),
        parent=os.getppid(),
        preloaded=sorted(m for m in PRELOAD if m in __import__("sys").modules),
    )


SPEC = StrategySpec("probe", Params, run)


@pytest.fixture(autouse=True)
def probe_registered():
    register("probe", f"{__name__}:SPEC")
    yield
    STRATEGIES.pop("probe", None)


def test_ranks_are_forked_from_the_preloaded_server_with_the_launchers_cwd_and_env(
    tmp_path, monkeypatch
):
    preload()
    forkserver.ensure_running()  # started here, before the cwd and the environment change
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISTLAB_PROBE", "set after the server started")
    cfg = make_config(tmp_path, strategy="probe", workers=2, save_model=False)

    result = distlab.run(cfg)

    for rank in (0, 1):
        lines = (result.run_dir / "events" / f"rank-{rank}.jsonl").read_text().splitlines()
        probe = next(e for e in map(json.loads, lines) if e.get("phase") == "probe")
        assert probe["cwd"] == str(tmp_path)
        assert probe["marker"] == "set after the server started"
        assert probe["parent"] != os.getpid()  # a child of the server, not of this process
        assert probe["preloaded"] == sorted(PRELOAD)


@pytest.mark.parametrize(
    ("argv", "wanted"),
    [
        (["run"], False),
        (["run", "--workers", "1"], False),
        (["run", "--workers", "2"], True),
        (["run", "--strategy", "allreduce", "--workers=4"], True),
        (["run", "--set", "workers=3"], True),
        (["run", "--config", "exp.yaml"], True),
        (["run", "-c", "exp.yaml"], True),
        (["report", "--workers", "2"], False),
        ([], False),
    ],
)
def test_the_server_is_started_early_only_for_several_local_processes(argv, wanted):
    assert wants_processes(argv) is wanted


def test_no_early_server_under_an_external_launcher(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not wants_processes(["run", "--workers", "2"])


def test_a_killed_command_takes_its_fork_server_and_ranks_with_it(tmp_path):
    import psutil
    from tests.cli.test_signals import start, wait_for_steps

    proc = start(tmp_path, workers=2)  # `python -m distlab run ... --workers 2`
    ranks = wait_for_steps(tmp_path / "r", workers=2)
    family = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    assert set(ranks) < set(family)  # the ranks, and the server they were forked from

    proc.kill()
    proc.wait(timeout=30)

    assert_no_orphans(family)
