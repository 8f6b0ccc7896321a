"""How a run ends when it does not complete: the exceptions, and each rank's error report.

A rank that fails writes its error report (type, first line, traceback) where the run's
`RunPaths.rank_error` says; the launcher that watches the ranks reads them back and names the
rank that caused the failure.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distlab.runs.directory import RunPaths

PEER_ERROR_HINTS = ("connection", "timed out", "timeout", "socket", "peer", "gloo", "closed")

TIMEOUT_HINTS = ("timed out", "timeout")

# Spawned workers are named so; one that re-imports an unguarded script exits with this code
# (sysexits' EX_CONFIG), which no other path of a worker uses.
WORKER_NAME = "distlab-rank-"

UNGUARDED_EXIT = 78


class RunFailed(RuntimeError):
    """A rank died, raised or got stuck; the message names it. `rank_errors` holds what the
    ranks themselves reported before the run was stopped: {rank: "Type: message"}."""

    def __init__(self, message: str, rank_errors: dict[int, str] | None = None) -> None:
        super().__init__(message)
        self.rank_errors = rank_errors or {}


class RunInterrupted(RuntimeError):
    """The user pressed Ctrl-C; every process was stopped."""

    status, exit_code = "interrupted", 130


class RunTerminated(RunInterrupted):
    """SIGTERM stopped the run (kill, timeout, Slurm's scancel, docker stop); every process was
    stopped and the run recorded, as after Ctrl-C."""

    status, exit_code = "terminated", 143


class Terminated(BaseException):
    """Raised by SIGTERM in the main thread while a run is in progress. Like KeyboardInterrupt
    it is no Exception, so no `except Exception` takes it for a failed rank."""


class MainNotGuarded(ValueError):
    """The script calls distlab.run when imported, so every spawned worker, which imports the
    main script again, called it too."""


def unguarded_message() -> str:
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    where = f" in {main}" if main else ""
    return (
        "distlab.run was called again by the worker processes, which import the main script "
        f'anew: call distlab.run under `if __name__ == "__main__":`{where}'
    )


def refuse_worker_import() -> None:
    """Stop a spawned process that is importing the main script (before it runs its target)
    from starting a run of its own. One of our workers exits quietly with UNGUARDED_EXIT and
    the parent reports the fix once; another program's worker gets the error itself."""
    process = multiprocessing.current_process()
    # multiprocessing sets _inheriting while a spawn or forkserver child re-imports __main__
    # (parent_process() is still None then); it is what multiprocessing itself checks to
    # refuse starting processes at that moment.
    if not getattr(process, "_inheriting", False):
        return
    if process.name.startswith(WORKER_NAME):
        # os._exit, not SystemExit: a fork server's child turns any exception, SystemExit
        # included, into exit code 1
        os._exit(UNGUARDED_EXIT)
    raise RuntimeError(unguarded_message())


def stopped_error(exc: BaseException, run_dir: Path) -> RunInterrupted:
    """The exception a run stopped by SIGTERM (Terminated) or Ctrl-C ends with."""
    if isinstance(exc, Terminated | RunTerminated):
        return RunTerminated(f"terminated by SIGTERM; partial run kept in {run_dir}")
    return RunInterrupted(f"interrupted; partial run kept in {run_dir}")


def is_peer_error(message: str) -> bool:
    low = message.lower()
    return any(hint in low for hint in PEER_ERROR_HINTS)


def is_timeout(message: str) -> bool:
    low = message.lower()
    return any(hint in low for hint in TIMEOUT_HINTS)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def read_error(paths: RunPaths, rank: int) -> str:
    try:
        info = json.loads(paths.rank_error(rank).read_text())
    except (OSError, ValueError):
        return ""
    return f"{info['type']}: {info['message']}"


def read_errors(paths: RunPaths, ranks) -> dict[int, str]:
    """{rank: "Type: message"} of the ranks that reported an error."""
    found = {rank: read_error(paths, rank) for rank in ranks}
    return {rank: message for rank, message in found.items() if message}


def write_error(paths: RunPaths, rank: int, exc: BaseException) -> None:
    """Write this rank's error report: type, first line and traceback."""
    path = paths.rank_error(rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
    info = {
        "rank": rank,
        "type": type(exc).__name__,
        "message": message[:500],
        "traceback": traceback.format_exc(),
    }
    path.write_text(json.dumps(info))


# --- injected faults ----------------------------------------------------------------------

# The fault record (RunPaths.fault) is written by the rank whose injected fault fires, just
# before it fires: the failure message names the fault, and neither a torchrun restart nor
# --resume fires it a second time.


def record_fault(record: Path, fault, attempt: int) -> None:
    """Note in `record` that `fault` (a FaultConfig) fires now, in torchrun attempt `attempt`
    (0 without torchrun)."""
    info = {"rank": fault.rank, "step": fault.step, "kind": fault.kind, "attempt": attempt}
    record.write_text(json.dumps(info) + "\n")


def fired_fault(record: Path) -> dict | None:
    """The injected fault that fired in this run, read from its record, or None."""
    try:
        info = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def has_fired(record: Path, fault) -> bool:
    """Whether this very fault (rank, step, kind) already fired, by the run's fault record."""
    info = fired_fault(record)
    same = ("rank", "step", "kind")
    return info is not None and all(info.get(k) == getattr(fault, k) for k in same)


def forget_fault(record: Path) -> None:
    """A resume that gives the fault again lets it fire again."""
    record.unlink(missing_ok=True)


def blame_fault(failure: RunFailed, record: Path, fault, attempt: int) -> RunFailed:
    """`failure`, its message naming the injected fault when that fault fired in this attempt
    (`rank 1 exited with code 3 (injected fault: fault.kind=exit at step 20)`); a message
    that says so already (kind raise) is kept as it is."""
    message = str(failure)
    info = fired_fault(record)
    if fault is None or "injected fault" in message or not has_fired(record, fault):
        return failure
    if info.get("attempt", 0) != attempt:
        return failure  # it fired in an earlier attempt of a restarted torchrun job
    return RunFailed(f"{message} (injected fault: {fault.describe()})", failure.rank_errors)
