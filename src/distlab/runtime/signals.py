"""SIGTERM during a run: stop and record it as Ctrl-C does (kill, timeout, scancel, docker stop)."""

from __future__ import annotations

import ctypes
import os
import select
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from distlab.runtime.failures import Terminated


@contextmanager
def sigterm_raises(ignore_after_error: bool = False) -> Iterator[None]:
    """While a run is in progress SIGTERM raises Terminated in the main thread, so the run is
    stopped and recorded as Ctrl-C stops it. Left alone where that cannot work (outside the
    main thread) or where the program installed a handler of its own. With
    `ignore_after_error`, a run that ends in an exception leaves SIGTERM ignored: torchrun
    stops every rank as soon as one exits with an error, and rank 0, about to print the
    cause and exit, must not be cut short."""
    ours = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    )
    previous = signal.signal(signal.SIGTERM, raise_terminated) if ours else None
    try:
        yield
    except BaseException:
        if ours and ignore_after_error:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            ours = False
        raise
    finally:
        if ours:
            signal.signal(signal.SIGTERM, previous)


def raise_terminated(signum: int, frame: object) -> None:
    # Once only: a second SIGTERM must not cut short the cleanup the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def hold_sigterm() -> None:
    """The run is being recorded from here on: a SIGTERM now is ignored, not raised into the
    middle of writing summary.json."""
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGTERM) is raise_terminated:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def set_parent_death_signal(signum: int) -> None:
    """Linux: the kernel sends this process `signum` when its parent dies (PR_SET_PDEATHSIG),
    so no child outlives a killed parent; a no-op where libc has no prctl."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signum)
    except (OSError, AttributeError):
        pass


def die_with(pid: int) -> None:
    """SIGKILL this process as soon as process `pid` ends: PR_SET_PDEATHSIG for a process
    whose parent is not the one it must die with (a rank forked by the fork server dies with
    the launcher, not with the server). A thread waits on a pidfd of `pid`."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:  # already gone
        os.kill(os.getpid(), signal.SIGKILL)
        return

    def wait_then_die() -> None:
        select.select([fd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=wait_then_die, name="distlab-die-with", daemon=True).start()
