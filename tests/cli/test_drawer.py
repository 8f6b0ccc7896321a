"""The drawer: `distlab run` of a strategy that divides the data draws partition.png in a side
process that imported matplotlib while the command imported torch. The figure is on disk
when the command ends, and the drawer never outlives the command, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from tests.conftest import assert_no_orphans

from distlab.data.partition import partition
from distlab.drawer import Drawer, wants_drawer
from distlab.runs.directory import write_partition_json

PNG = b"\x89PNG\r\n\x1a\n"
FEDAVG = ["run", "--strategy", "fedavg", "--dataset", "synthetic", "--model", "mlp"]
FEDAVG += ["--clients", "4", "--quiet", "--name", "r"]


@pytest.mark.parametrize(
    ("argv", "wanted"),
    [
        (["run"], False),
        (["run", "--strategy", "centralized"], False),
        (["run", "--strategy", "fedavg"], True),
        (["run", "--strategy=gossip"], True),
        (["run", "--set", "strategy.name=fedavg"], True),
        (["run", "--config", "exp.yaml"], False),  # it may ask for processes: the fork server
        # beside the fork server's import a third one slows the ranks' start
        (["run", "--strategy", "allreduce", "--workers", "2"], False),
        (["run", "--strategy", "fedavg", "--help"], False),
        (["report", "--strategy", "fedavg"], False),
        ([], False),
    ],
)
def test_which_commands_want_a_drawer(argv, wanted):
    assert wants_drawer(argv) is wanted


def launch(tmp_path: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "distlab", *FEDAVG, "--out-dir", str(tmp_path), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def drawer_of(command: subprocess.Popen, deadline: float = 30) -> int:
    """The pid of the command's drawer, started first thing."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        for child in psutil.Process(command.pid).children():
            try:
                if "distlab.drawer" in child.cmdline():
                    return child.pid
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.02)
    raise AssertionError("the command started no drawer")


def wait_for(path: Path, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while not path.exists():
        assert time.monotonic() < end, f"{path.name} never appeared"
        time.sleep(0.05)


def test_the_figure_is_on_disk_when_the_command_ends_and_the_drawer_is_gone(tmp_path):
    command = launch(tmp_path, "--set", "strategy.rounds=3")
    drawer = drawer_of(command)
    out, err = command.communicate(timeout=120)

    assert command.returncode == 0, err
    assert err == ""
    assert (tmp_path / "r" / "partition.png").read_bytes().startswith(PNG)
    assert_no_orphans([drawer], grace=0)


def test_a_killed_command_takes_its_drawer_with_it(tmp_path):
    command = launch(tmp_path, "--set", "strategy.rounds=100000")
    drawer = drawer_of(command)
    wait_for(tmp_path / "r" / "partition.json")

    command.send_signal(signal.SIGKILL)
    command.wait(timeout=30)

    assert_no_orphans([drawer], grace=5)


def test_a_dead_drawer_leaves_the_figure_to_the_run(tmp_path):
    command = launch(tmp_path, "--set", "strategy.rounds=20")
    os.kill(drawer_of(command), signal.SIGKILL)
    out, err = command.communicate(timeout=120)

    assert command.returncode == 0, err
    assert err == ""
    assert (tmp_path / "r" / "partition.png").read_bytes().startswith(PNG)


def test_ctrl_c_reaches_the_command_not_the_drawer(tmp_path):
    # A terminal's Ctrl-C signals the whole foreground group: the command records the run
    # as interrupted, and the drawer leaves that to it (no traceback of its own).
    command = subprocess.Popen(
        [sys.executable, "-m", "distlab", *FEDAVG, "--out-dir", str(tmp_path)]
        + ["--set", "strategy.rounds=100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    drawer = drawer_of(command)
    wait_for(tmp_path / "r" / "events" / "rank-0.jsonl")
    time.sleep(0.5)

    os.killpg(command.pid, signal.SIGINT)
    out, err = command.communicate(timeout=60)

    assert command.returncode == 130
    assert err.startswith("error: interrupted") and err.count("\n") == 1
    assert (tmp_path / "r" / "partition.png").read_bytes().startswith(PNG)
    assert_no_orphans([drawer], grace=0)


def test_the_drawer_answers_each_run_in_order_and_says_why_a_figure_failed(tmp_path):
    labels = np.repeat(np.arange(3), 10)
    good, bad = tmp_path / "good", tmp_path / "bad"
    for run_dir in (good, bad):
        write_partition_json(run_dir, partition(labels, 3, seed=0))
    (bad / "partition.png").mkdir()  # nothing can be written there
    drawer = Drawer()
    try:
        drawer.submit(good)
        drawer.submit(bad)

        assert "partition.png" in drawer.collect(bad)  # past the good run's answer, kept
        assert drawer.collect(good) == ""
        assert (good / "partition.png").read_bytes().startswith(PNG)
        assert drawer.collect(good) is None  # collected: the caller would draw it
    finally:
        drawer.stop()
    assert_no_orphans([drawer.process.pid], grace=0)
