"""A `distlab run` child process: start it, follow its events, stop it with grace, collect
its outcome.

Sweeps and searches run each of their runs as a child `distlab run` into a run directory of
its own. The child is the leader of a process group of its own (its ranks are in it), so a
Ctrl-C at the terminal reaches the parent alone, which stops each child once; the kernel
sends the child SIGTERM when the parent dies, so a killed parent leaves no run behind. The
outcome comes from the run's summary.json, written last and atomically by the child
whatever the run's end; the child's last stderr line stands in only where it died before
writing one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distlab.runs.directory import RunPaths, read_json_or_none
from distlab.runs.events import EventFile
from distlab.runtime.failures import Terminated
from distlab.runtime.signals import set_parent_death_signal, sigterm_raises

# Seconds a stopped child gets to record its run before its process group is killed.
STOP_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class RunOutcome:
    """How a child's run ended. `status` is the summary's (completed, failed, interrupted,
    terminated), failed where the child wrote none or exited with an error; `error` the
    summary's cause, else the child's last stderr line; `seconds` the parent's wall clock
    from start to end; `summary` the whole record ({} when there is none)."""

    status: str
    error: str | None
    run_dir: Path
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)
    returncode: int | None = None

    @property
    def completed(self) -> bool:
        return self.status == "completed"


def read_summary(run_dir: Path) -> dict[str, Any]:
    """The run's summary as written so far: {} where there is none yet, or it cannot be
    read (a run still going, or killed before it wrote one)."""
    return read_json_or_none(RunPaths(Path(run_dir)).summary) or {}


def last_line(log: Path) -> str | None:
    """The last line a child wrote to its stderr log; None where it wrote nothing."""
    try:
        lines = [line for line in Path(log).read_text().splitlines() if line.strip()]
    except OSError:
        return None
    return lines[-1] if lines else None


def die_with_parent() -> None:
    """The kernel sends this child SIGTERM when its parent dies: the run records itself as
    terminated and stops its ranks."""
    set_parent_death_signal(signal.SIGTERM)


class RunChild:
    """One `distlab run --config FILE --quiet` child writing into `run_dir`, its stderr in
    `log`."""

    def __init__(self, proc: subprocess.Popen, run_dir: Path, log: Path) -> None:
        self.proc, self.run_dir, self.log = proc, Path(run_dir), Path(log)
        self.started = time.monotonic()
        self.files: dict[Path, EventFile] = {}

    @classmethod
    def start(
        cls,
        config: Path,
        run_dir: Path,
        log: Path,
        cwd: str | Path | None = None,
        overwrite: bool = False,
    ) -> RunChild:
        """Start the child on the config file; `run_dir` is where that config writes."""
        cmd = [sys.executable, "-m", "distlab", "run", "--quiet", "--config", str(config)]
        cmd += ["--overwrite"] if overwrite else []
        with open(log, "w") as err:
            proc = subprocess.Popen(
                cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True, preexec_fn=die_with_parent,
            )  # fmt: skip
        return cls(proc, run_dir, log)

    def running(self) -> bool:
        return self.proc.poll() is None

    def new_events(self) -> list[dict[str, Any]]:
        """The events every rank wrote since the last call, rank file by rank file (only
        the lead rank records evals, so a caller after evals reads them all)."""
        events = []
        for path in RunPaths(self.run_dir).rank_event_files():
            events += self.files.setdefault(path, EventFile(path, keep=False)).read()
        return events

    def send_signal(self, signum: int) -> None:
        """Ask the child to stop as a user would (SIGINT for Ctrl-C, SIGTERM for kill)."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signum)
            except ProcessLookupError:
                pass

    def wait(self, deadline: float) -> None:
        """Wait for the child until `deadline` (monotonic seconds), then kill its process
        group: the child and any rank it left."""
        try:
            self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
            self.proc.wait()

    def stop(self, signum: int = signal.SIGTERM, grace: float = STOP_GRACE_SECONDS) -> bool:
        """Stop the child with `signum`, killed after `grace` seconds; whether it was still
        running."""
        if self.proc.poll() is not None:
            return False
        self.send_signal(signum)
        self.wait(time.monotonic() + grace)
        return True

    def last_line(self) -> str | None:
        return last_line(self.log)

    def outcome(self) -> RunOutcome:
        """The ended child's outcome, from its summary.json."""
        seconds = round(time.monotonic() - self.started, 3)
        summary = read_summary(self.run_dir)
        status = summary.get("status") or "failed"
        if status == "completed" and self.proc.returncode != 0:
            status = "failed"
        error = summary.get("error") or (None if status == "completed" else self.last_line())
        return RunOutcome(status, error, self.run_dir, seconds, summary, self.proc.returncode)


def stop_all(children: Iterable[RunChild], signum: int, grace: float = STOP_GRACE_SECONDS) -> None:
    """Stop every child at once: each is told, then each gets what is left of one grace
    period before its process group is killed."""
    children = list(children)
    for child in children:
        child.send_signal(signum)
    deadline = time.monotonic() + grace
    for child in children:
        child.wait(deadline)


@contextmanager
def stopping(running: Callable[[], Iterable[RunChild]], grace: float = STOP_GRACE_SECONDS
             ) -> Iterator[None]:  # fmt: skip
    """While a parent follows its children: SIGTERM raises Terminated, and Ctrl-C or SIGTERM
    stops every running child the same way (SIGINT or SIGTERM) before the exception goes
    on, so each records its run as stopped."""
    try:
        with sigterm_raises():
            yield
    except (KeyboardInterrupt, Terminated) as exc:
        signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        stop_all(running(), signum, grace)
        raise
