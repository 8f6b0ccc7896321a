"""Simulated boards: the edge_lr firmware's ELF running on simavr, one simrunner process per
board, each behind its own pty (firmware/simrunner/simrunner.c).

    with start_simulated_boards(3) as sim:
        boards = [Board(port, i) for i, port in enumerate(sim.ports)]
        ...
    sim.totals  # per board: cycles, simulated seconds, LED toggles, bytes each way

Every runner is started in a session of its own (Ctrl-C in a terminal reaches only us; we stop
the runners) and dies with its parent (a parent-death signal set inside the runner), so no
simulated board outlives the process that started it.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from distlab.edge.protocol import DEFAULT_BAUD
from distlab.edge.toolchain import build

START_TIMEOUT = 10.0
STOP_GRACE = 3.0


class SimulatorError(RuntimeError):
    """A simulated board that would not start; the message has what its runner said."""


@dataclass(frozen=True)
class SimTotals:
    """A runner's last line: how long the board ran in simulated time and what it did."""

    cycles: int
    simulated_seconds: float
    led_toggles: int
    bytes_in: int
    bytes_out: int
    dropped: int
    state: str


class SimulatedBoards:
    """Running simulated boards: `ports[i]` is board i's pty. Stop them with stop() or by
    leaving the `with` block; `totals` then holds each one's SimTotals (None if killed)."""

    def __init__(self, processes: list[subprocess.Popen], ports: list[str]):
        self.processes = processes
        self.ports = ports
        self.totals: list[SimTotals | None] = []

    def __enter__(self) -> SimulatedBoards:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __len__(self) -> int:
        return len(self.ports)

    def kill(self, index: int) -> None:
        """Kill board `index` at once (SIGKILL), as a board pulled off the bus would go."""
        self.processes[index].kill()
        self.processes[index].wait()

    def stop(self) -> list[SimTotals | None]:
        """Stop every runner (SIGTERM, then SIGKILL after a grace period); idempotent."""
        if self.totals:
            return self.totals
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.send_signal(signal.SIGCONT)  # a paused runner must wake to exit
        self.totals = [finish(process) for process in self.processes]
        return self.totals


def start_simulated_boards(
    count: int,
    firmware: Path | None = None,
    runner: Path | None = None,
    baud: int = DEFAULT_BAUD,
) -> SimulatedBoards:
    """Start `count` simulated boards. Without `firmware` and `runner`, builds them first (make
    is incremental), the firmware for `baud`."""
    if count < 1:
        raise ValueError(f"simulated boards must be >= 1 (got {count})")
    if firmware is None or runner is None:
        built = build(baud)
        firmware, runner = firmware or built.elf, runner or built.runner
    started: list[subprocess.Popen] = []
    ports = []
    try:
        for _ in range(count):
            process, log = launch(runner, firmware)
            started.append(process)
            try:
                ports.append(read_port(process, log))
            finally:
                log.unlink()  # what the runner says at startup is all we read
    except BaseException:
        SimulatedBoards(started, []).stop()
        raise
    return SimulatedBoards(started, ports)


def launch(runner: Path, firmware: Path) -> tuple[subprocess.Popen, Path]:
    fd, name = tempfile.mkstemp(prefix="distlab-simrunner-", suffix=".log")
    with os.fdopen(fd, "wb") as log:
        process = subprocess.Popen(
            [str(runner), str(firmware)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
    return process, Path(name)


def read_port(process: subprocess.Popen, log: Path) -> str:
    """The runner's first line: its pty's path."""
    ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
    line = process.stdout.readline().decode().strip() if ready else ""
    if not line.startswith("/dev/"):
        exited = ready and has_exited(process)
        process.kill()
        said = log.read_text(errors="replace").strip()[-500:] or "nothing"
        when = "" if exited else f" within {START_TIMEOUT:g} s"
        raise SimulatorError(f"simrunner did not start{when}: {said}")
    return line


def has_exited(process: subprocess.Popen, grace: float = 0.5) -> bool:
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        return False
    return True


def finish(process: subprocess.Popen) -> SimTotals | None:
    try:
        out, _ = process.communicate(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return parse_totals(out.decode(errors="replace"))


def parse_totals(text: str) -> SimTotals | None:
    """SimTotals from the runner's `simrunner: key=value ...` line, if it printed one.

    >>> parse_totals("simrunner: cycles=16 simulated_s=0.000001 led_toggles=2 bytes_in=3 "
    ...              "bytes_out=4 dropped=0 state=stopped").led_toggles
    2
    """
    for line in text.splitlines():
        if line.startswith("simrunner: "):
            f = dict(word.split("=", 1) for word in line.split()[1:])
            return SimTotals(
                int(f["cycles"]), float(f["simulated_s"]), int(f["led_toggles"]),
                int(f["bytes_in"]), int(f["bytes_out"]), int(f["dropped"]), f["state"],
            )  # fmt: skip
    return None
