"""partition.png drawn beside the run by a side process, not after it.

The figure costs about 0.35 s, 0.2 s of it importing matplotlib, and a run drew it once
training was over, so every `distlab run` that divides its data ended that much after its
summary. The `distlab` command now starts a drawer first thing (`start`) when its arguments
name such a run in one process (a federated simulation; several local processes have the
fork server's import on the second core already). The drawer imports matplotlib on the
second core while the command imports torch. The run hands it the run directory as soon as
partition.json is written (`submit`), and it draws at the lowest CPU priority (nice 19),
so the run's own timings do not pay for it. `finish_run` waits for the figure where it used
to draw it (`collect`): a run still ends with its plot on disk, or with the same warning as
before.

The drawer reads run directories, one JSON string a line, on its stdin and answers each with
a JSON string on stdout: "" when drawn, else why not. It ignores Ctrl-C (the command handles
it), dies with the command (PR_SET_PDEATHSIG on Linux, end of its stdin elsewhere), and is
killed at the command's exit. Without a drawer (the API, sweeps, torchrun ranks, a drawer
that died) the run draws in its own process, as before.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

from distlab.runtime.environ import external_env
from distlab.runtime.prestart import wants_processes

# How long finish_run waits for a figure before it draws it itself.
TIMEOUT_S = 60.0

_drawer: Drawer | None = None


def wants_drawer(argv: list[str]) -> bool:
    """`distlab run` of a strategy that divides the data (not centralized, the default) in one
    local process. A wrong guess costs an idle process. Not beside the fork server of several
    local processes (started for a config file too), nor under an external launcher: on two
    cores a third import slowed the ranks' start by more than drawing after training costs."""
    if not argv or argv[0] != "run" or "--help" in argv or external_env() is not None:
        return False
    if wants_processes(argv):
        return False
    for flag, value in zip(argv, [*argv[1:], ""], strict=True):
        key, eq, inline = flag.partition("=")
        if key == "--strategy":
            return (inline if eq else value) != "centralized"
        if flag == "--set" and value.startswith("strategy.name="):
            return value.partition("=")[2] != "centralized"
    return False


def start(argv: list[str]) -> bool:
    """Start the drawer when `argv` (the command's arguments) asks for a run that will have a
    partition; True when it did."""
    global _drawer
    if _drawer is None and wants_drawer(argv):
        try:
            _drawer = Drawer()
        except OSError:  # no process to spare: the run draws the figure itself
            return False
        atexit.register(_drawer.stop)
    return _drawer is not None


def submit(run_dir: Path) -> None:
    """Hand the drawer run_dir (its partition.json written), if there is a drawer."""
    if _drawer is not None:
        _drawer.submit(run_dir)


def collect(run_dir: Path) -> str | None:
    """Wait for the drawer's answer for run_dir: "" when partition.png is drawn, a reason when
    it could not be, None when the drawer does not have it (the caller draws it)."""
    return None if _drawer is None else _drawer.collect(run_dir)


def record_partition(run_dir: Path, split) -> None:
    """partition.json, for every run whose data is divided among workers. Its plot is drawn
    by the drawer meanwhile, or by `draw_partition` once training is over, so that
    matplotlib never delays the first step."""
    from distlab.runs.directory import write_partition_json

    if split is not None and len(split.indices) > 1:
        write_partition_json(run_dir, split)
        submit(run_dir)


def draw_partition(run_dir: Path) -> None:
    """partition.png from partition.json, whatever the run's outcome: the drawer's, else
    drawn here. The record is the JSON: a plot that cannot be drawn is a warning, never a
    lost summary or a hidden failure."""
    from distlab.runs.directory import write_partition_plot

    try:
        answer = collect(run_dir)
        if answer is None:
            write_partition_plot(run_dir)
        elif answer:
            raise ValueError(answer)
    except (ValueError, OSError) as exc:
        warnings.warn(f"partition.png not written: {exc}", stacklevel=2)


class Drawer:
    """The side process and the run directories handed to it, in order."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "distlab.drawer", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.pending: list[str] = []  # handed over, not answered yet, in order
        self.answers: dict[str, str] = {}
        self.buffer = b""

    def submit(self, run_dir: Path) -> None:
        try:
            # absolute: the drawer's working directory is the command's at its start
            path = str(Path(run_dir).resolve())
            self.process.stdin.write(json.dumps(path).encode() + b"\n")
            self.process.stdin.flush()
        except OSError:  # the drawer is gone: the run draws its own figure
            return
        self.pending.append(str(run_dir))

    def collect(self, run_dir: Path) -> str | None:
        key = str(run_dir)
        while key in self.pending and key not in self.answers:
            reply = self.read_line(time.monotonic() + TIMEOUT_S)
            if reply is None:  # died or stuck: forget it, the runs draw their own figures
                self.pending.clear()
                self.stop()
                return None
            self.answers[self.pending.pop(0)] = json.loads(reply)  # answers come in order
        return self.answers.pop(key, None)

    def read_line(self, deadline: float) -> str | None:
        """The drawer's next line, or None when it ends or the deadline passes first."""
        fd = self.process.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                pipe.close()
            except OSError:
                pass


def die_with(parent: int) -> None:
    """End this process when `parent` ends, even by SIGKILL (Linux); elsewhere the end of
    stdin does it once the current figure is drawn."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it ended before the line above took effect
        os._exit(0)


def serve(parent: int) -> None:
    """The drawer's loop: import matplotlib now, then draw each run directory read."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with(parent)
    os.nice(19)
    import distlab.plots  # noqa: F401  (matplotlib, while the command imports torch)
    from distlab.runs.directory import write_partition_plot

    for line in sys.stdin:
        try:
            write_partition_plot(json.loads(line))
            reply = ""
        except Exception as exc:  # every failure is the run's warning, not the drawer's end
            reply = str(exc) or type(exc).__name__
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
