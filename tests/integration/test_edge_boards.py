"""Simulated edge boards: the real edge_lr firmware on simavr behind ptys, driven by the same
host code a real Uno on /dev/ttyACM0 gets. Skips, naming the Debian package, where the AVR
toolchain or simavr is missing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
from tests.conftest import REPO, assert_no_orphans, cli

from distlab.edge.toolchain import FIRMWARE_NEEDS, RUNNER_NEEDS, missing_message

MISSING = missing_message(FIRMWARE_NEEDS + RUNNER_NEEDS)
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"edge boards: {MISSING}")
pytest.importorskip("serial", reason="needs pyserial (pip install 'distlab[edge]')")

from distlab.edge import (  # noqa: E402
    Board,
    BoardConfigError,
    BoardError,
    protocol,
    start_simulated_boards,
)
from distlab.edge.coordinator import Hyper, train_on_ports  # noqa: E402
from distlab.edge.data import load_edge_data  # noqa: E402
from distlab.edge.reference import reference_train, same_bits  # noqa: E402
from distlab.edge.toolchain import build  # noqa: E402

HYPER = Hyper(epochs=2, lr=0.5, batch=16)


@pytest.fixture(scope="module")
def built():
    return build()


@pytest.fixture(scope="module")
def data():
    return load_edge_data(components=8)


@pytest.fixture
def one_sim(built):
    with start_simulated_boards(1, built.elf, built.runner) as sim:
        yield sim


@pytest.fixture
def one_board(one_sim):
    with Board(one_sim.ports[0], 0, timeout=3.0) as board:
        board.hello()
        yield board


def small_set(samples=40, features=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, features)).astype(np.float32)
    return x, (x[:, 0] - x[:, 1] > 0).astype(int)


def test_the_firmware_fits_an_uno_with_room(built):
    assert built.hex.exists() and built.runner.exists()
    assert built.flash < 0.5 * 32256 and built.ram < 0.6 * 2048


def test_three_boards_average_like_the_centralized_reference(built, data):
    with start_simulated_boards(3, built.elf, built.runner) as sim:
        result = train_on_ports(sim.ports, data, HYPER)

    assert [b.samples for b in result.boards] == [152, 152, 151]
    assert all(b.matches_reference for b in result.boards)
    assert abs(result.average_accuracy - result.centralized_accuracy) <= 0.01
    assert result.average_accuracy > 0.9
    # The LED toggled with every batch: 10 batches an epoch on each board.
    assert all(t.led_toggles >= 20 for t in sim.totals)
    assert [b.bytes_sent > 152 * 66 * 2 for b in result.boards] == [True, True, True]


def test_the_board_speaks_every_command(one_board):
    info, stat0 = one_board.info, one_board.stat()
    one_board.set_weights(np.float32([1.0, -2.0]), 0.5)

    w, b = one_board.get_weights()
    z, p = one_board.predict(np.float32([1.0, 1.0]))

    assert info.max_features == protocol.MAX_FEATURES and info.version == 1
    assert w.tolist() == [1.0, -2.0] and b == 0.5
    assert z == np.float32(-0.5) and 0.37 < p < 0.38
    assert stat0.free_ram > 500 and not stat0.training
    assert one_board.ping() < 1.0


def test_more_features_than_the_firmware_holds_are_refused(one_board):
    too_many = np.zeros(protocol.MAX_FEATURES + 1, np.float32)

    with pytest.raises(BoardConfigError, match=r"holds 1 to 32 features \(got 33\)"):
        one_board.set_weights(too_many, 0.0)
    # The firmware refuses it too, when a host skips the check.
    with pytest.raises(BoardError, match=r"board 0 \(.*\) refused SETW: features"):
        one_board.request(protocol.set_weights(too_many, 0.0), "OK")


def test_a_corrupted_batch_is_nacked_resent_and_applied_once(one_board):
    x, y = small_set()
    one_board.set_weights(np.zeros(4, np.float32), 0.0)
    one_board.corrupt_next_batches(2)  # batch 0 goes out with a bad CRC twice

    stats = one_board.train(x, y, epochs=1, lr=0.5, batch=8)
    w, b = one_board.get_weights()
    stat = one_board.stat()

    rw, rb = reference_train(np.zeros(4, np.float32), 0.0, x, y, 1, 0.5, 8)
    assert stats.resends == 2 and stat.naks == 2
    assert stat.batches_applied == stats.batches == 5 and stats.samples == 40
    assert same_bits(w, rw) and same_bits(np.float32([b]), np.float32([rb]))


def test_a_repeated_batch_is_acknowledged_not_applied(one_board):
    # As when an ACK is lost and the host sends the batch again.
    x, y = small_set(8)
    one_board.set_weights(np.zeros(4, np.float32), 0.0)
    one_board.request(protocol.train(1, 0.5, 8, 8, 4), "OK")

    first = one_board.request(protocol.batch(0, x, y), "ACK")
    again = one_board.request(protocol.batch(0, x, y), "ACK")
    one_board.request("DONE", "DONE")

    w, b = one_board.get_weights()
    rw, rb = reference_train(np.zeros(4, np.float32), 0.0, x, y, 1, 0.5, 8)
    assert first.fields == again.fields == ("0",)
    assert one_board.stat().batches_applied == 1
    assert same_bits(w, rw) and same_bits(np.float32([b]), np.float32([rb]))


def test_a_board_killed_mid_training_is_named_within_the_timeout(built, data):
    with start_simulated_boards(3, built.elf, built.runner) as sim:
        kill_board_1 = lambda boards: threading.Timer(0.3, sim.kill, args=(1,)).start()  # noqa: E731
        start = time.monotonic()
        with pytest.raises(BoardError) as failure:
            train_on_ports(
                sim.ports, data, Hyper(50, 0.5, 16), timeout=2.0, before_train=kill_board_1
            )
        elapsed = time.monotonic() - start

    assert failure.value.board_id == 1
    assert str(failure.value).startswith(f"board 1 ({sim.ports[1]})")
    assert elapsed < 0.3 + 2.0 + 1.0


@pytest.mark.parametrize(
    ("samples", "batch", "said"),
    [
        (400, 8, r"did not acknowledge batch \d+ within 1 s"),  # waiting for an ACK
        (8000, 8000, r"stopped reading: its line stayed full for 1 s"),  # mid-frame, 272 KB
    ],
)
def test_a_hung_board_is_named_after_its_timeout(one_sim, one_board, samples, batch, said):
    x, y = small_set(samples)
    one_board.set_weights(np.zeros(4, np.float32), 0.0)
    runner = psutil.Process(one_sim.processes[0].pid)
    threading.Timer(0.2, runner.suspend).start()
    one_board.timeout = 1.0
    start = time.monotonic()

    with pytest.raises(BoardError, match=r"board 0 \(/dev/pts/\d+\) " + said):
        one_board.train(x, y, epochs=50, lr=0.5, batch=batch)

    assert time.monotonic() - start < 0.2 + 1.0 + 1.0
    runner.resume()


# ---- the command line ----


def test_cli_build_reports_flash_and_ram():
    done = cli("edge", "build")

    assert done.returncode == 0, done.stderr
    assert "flash:" in done.stdout and "of 32256 bytes" in done.stdout and "RAM:" in done.stdout


def test_cli_train_json():
    done = cli("edge", "train", "--sim", "3", "--epochs", "2", "--json")

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [b["matches_reference"] for b in result["boards"]] == [True] * 3
    assert abs(result["average_accuracy"] - result["centralized_accuracy"]) <= 0.01
    assert {"samples", "seconds", "accuracy"} <= set(result["boards"][0])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sim", "3", "--components", "64"], "--components must be 1 to 32"),
        (["--sim", "3", "--baud", "250000"], "--baud must be one of 9600, 19200"),
        (["--port", "/dev/no-such-board"], "port /dev/no-such-board does not exist"),
        ([], "give either --sim N"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, message):
    done = cli("edge", "train", *args)

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert done.stdout == ""


def test_cli_busy_port_is_refused(built):
    import serial

    with start_simulated_boards(1, built.elf, built.runner) as sim:
        with serial.Serial(sim.ports[0], exclusive=True):
            done = cli("edge", "train", "--port", sim.ports[0])

    assert done.returncode == 2
    assert f"port {sim.ports[0]} is busy" in done.stderr and done.stderr.count("\n") == 1


def test_cli_wrong_firmware_version_is_refused(built, tmp_path):
    subprocess.run(
        ["make", "-s", "-C", str(REPO / "firmware"), f"BUILD={tmp_path}", "firmware",
         "EXTRA_DEFINES=-DFW_VERSION=2"],
        check=True, capture_output=True,
    )  # fmt: skip
    with start_simulated_boards(1, tmp_path / "edge_lr.elf", built.runner) as sim:
        done = cli("edge", "train", "--port", sim.ports[0])

    assert done.returncode == 2
    assert "runs edge_lr version 2; this host speaks version 1" in done.stderr


def test_cli_sim_prints_ports_and_stops_on_ctrl_c():
    command = [sys.executable, "-m", "distlab", "edge", "sim", "--boards", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = [process.stdout.readline() for _ in range(2)]
    runners = [c.pid for c in psutil.Process(process.pid).children()]
    with Board(lines[1].split(": ")[1].strip(), 1) as board:
        assert board.hello().board_id == 1

    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=10)

    assert process.returncode == 0, stderr
    assert [line.split(":")[0] for line in lines] == ["board 0", "board 1"]
    assert "LED toggles" in stderr and len(runners) == 2
    assert_no_orphans(runners)


def test_simulated_boards_die_with_a_killed_parent():
    command = [sys.executable, "-m", "distlab", "edge", "sim", "--boards", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    process.stdout.readline()
    process.stdout.readline()
    runners = [c.pid for c in psutil.Process(process.pid).children()]

    process.kill()
    process.wait()

    assert len(runners) == 2
    assert_no_orphans(runners)
