"""The spawn launcher: N local processes, watched until the first one fails.

Each rank is forked from multiprocessing's fork server, an interpreter that has imported
torch and nothing of the run (runtime/prestart.py), and is handed the parent's config,
working directory and environment; it joins a TCPStore the parent hosts on a free port, so
there are no port races. The first death or exception becomes a
RunFailed that names the rank; the other ranks are stopped and none outlives the parent
(PR_SET_PDEATHSIG).

A rank runs the parent's main script again only when it has one to run: a script file, or a
module run with -m. A notebook, `python -c` and the REPL have none, and the program read from
stdin (its file "<stdin>") is withheld while the ranks start (`main_withheld`), so that
`python - <<EOF` works as a notebook does; the entry a rank runs is a module of its own.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing import connection, get_context
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from distlab.config import RunConfig
from distlab.data.datasets import Dataset
from distlab.runtime.failures import (
    UNGUARDED_EXIT,
    WORKER_NAME,
    MainNotGuarded,
    RunFailed,
    RunInterrupted,
    RunTerminated,
    Terminated,
    is_peer_error,
    read_error,
    read_errors,
    unguarded_message,
    write_error,
)
from distlab.runtime.prestart import preload
from distlab.runtime.signals import die_with, raise_terminated, set_parent_death_signal
from distlab.runtime.worker import (
    Job,
    RankSetup,
    load_entry,
    notify,
    parse_config,
    resolve_device,
    run_worker,
    thread_count,
)

if TYPE_CHECKING:
    from distlab.runs.directory import RunPaths

STOP_GRACE_SECONDS = 3.0


def launch_local(
    cfg: RunConfig,
    job: Job,
    run_dir: Path,
    start: float,
    data: Dataset | None = None,
    on_event: Callable | None = None,
    follow: Callable[[], None] | None = None,
) -> None:
    """Spawn `world` processes and wait; RunFailed names the first rank that failed.
    KeyboardInterrupt and Terminated (SIGTERM) stop every process and become RunInterrupted
    and RunTerminated. `on_event` gets status events; `follow`, the caller's, is called
    while they run (to pass the lead rank's new events on); `data` is not used (each
    process loads its own)."""
    store = dist.TCPStore(
        "127.0.0.1",
        0,
        world_size=None,
        is_master=True,
        wait_for_workers=False,
        timeout=timedelta(seconds=cfg.timeout),
    )
    preload()
    ctx, world = get_context("forkserver"), job.world
    paths = job.paths(Path(run_dir).resolve())
    args = (
        job,
        cfg.model_dump_json(),
        paths,
        start,
        store.port,
        thread_count(cfg, world),
        Inherited.now(),
    )
    procs = [
        ctx.Process(target=_child, args=(rank, *args), name=f"{WORKER_NAME}{rank}", daemon=True)
        for rank in range(world)
    ]
    try:
        watch_until_done(procs, cfg, paths, follow, on_event)
    finally:
        del store


def watch_until_done(
    procs: list,
    cfg: RunConfig,
    paths: RunPaths,
    follow: Callable[[], None] | None,
    on_event: Callable | None,
) -> None:
    """Start the processes and watch them until all end or one fails, calling `follow` as
    they run; Ctrl-C and SIGTERM stop them all. Whatever happens, none outlives this call."""
    world = len(procs)
    try:
        notify(on_event, f"starting {world} processes")
        with main_withheld():
            for proc in procs:
                proc.start()
        notify(on_event, f"waiting for {world} processes to join")
        _watch(procs, paths, cfg.timeout, follow)
        if follow is not None:
            follow()
    except KeyboardInterrupt:
        stop_all(procs)
        raise RunInterrupted("interrupted by the user; all processes stopped") from None
    except Terminated:
        stop_all(procs)
        raise RunTerminated("terminated by SIGTERM; all processes stopped") from None
    finally:
        stop_all(procs)


def ranks_import_main() -> bool:
    """Whether a new process runs the parent's main module again: a script file, or a module
    run with -m (not a package's __main__, which multiprocessing skips). A notebook, `python
    -c` and the REPL have none to run; the program read from stdin and a file removed since
    cannot be run (`unreadable_main`)."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:
        return name.rpartition(".")[2] != "__main__"
    path = getattr(main, "__file__", None)
    return path is not None and Path(path).is_file()


def unreadable_main() -> str | None:
    """The main module's file when multiprocessing would have a new process run it, and it
    cannot: "<stdin>" for `python - <<EOF` and `python < script.py`."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(main, "__spec__", None) is not None or path is None or Path(path).is_file():
        return None
    return path


@contextmanager
def main_withheld() -> Iterator[None]:
    """While processes start, an empty main module in place of one they cannot run again.
    multiprocessing has each new process run the parent's main module from its file (it
    reads sys.modules["__main__"] when a process starts); "<stdin>" is no file, and every
    rank died of FileNotFoundError. A notebook's main module has no file, so its ranks run
    none: this makes stdin's the same."""
    if unreadable_main() is None:
        yield
        return
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def check_entry_importable(entry: str) -> None:
    """ValueError when the entry ("module:attribute") lives in a main module that new
    processes do not import: a notebook's, the REPL's, `python -c`'s or the program read from
    stdin. Called before anything is written; the inline launcher needs no such check."""
    if entry.partition(":")[0] != "__main__" or ranks_import_main():
        return
    main = sys.modules.get("__main__")
    where = getattr(main, "__file__", None) or "a notebook or an interactive session"
    raise ValueError(
        f"{entry} is defined in the main program ({where}), which the worker processes cannot "
        "import: move it to a module file and register it under that module's name"
    )


def announce_training(on_event: Callable | None) -> Callable | None:
    """Pass the lead rank's events on, with a "training" status line when training starts."""
    if on_event is None:
        return None

    def forward(event: dict) -> None:
        if event.get("phase") == "train":
            notify(on_event, "training")
        on_event(event)

    return forward


def _watch(procs: list, paths: RunPaths, timeout: float, on_poll: Callable | None) -> None:
    pending = {p.sentinel: rank for rank, p in enumerate(procs)}
    while pending:
        ready = connection.wait(list(pending), timeout=0.2)
        if on_poll is not None:
            on_poll()
        ended = [pending.pop(s) for s in ready]
        for rank in ended:
            procs[rank].join(5)  # the sentinel fires a moment before the exit status is set
        if any(procs[rank].exitcode == UNGUARDED_EXIT for rank in ended):
            raise MainNotGuarded(unguarded_message())
        if any(procs[rank].exitcode != 0 for rank in ended):
            time.sleep(0.3)  # let peers that fail because of it report too, then pick the cause
            # What the ranks reported before we stop the rest: a rank that fails because we
            # stopped its peer is no error of the run.
            errors = read_errors(paths, range(len(procs)))
            raise RunFailed(describe_failure(procs, paths, timeout), errors)


def describe_failure(procs: list, paths: RunPaths, timeout: float) -> str:
    """Name the rank that caused the failure: a killed rank, else one that exited without a
    report, else one whose own error is not a peer/connection error, else a rank still
    blocked when the others timed out."""
    errors = {r: read_error(paths, r) for r, p in enumerate(procs) if p.exitcode not in (None, 0)}
    killed = [r for r, p in enumerate(procs) if p.exitcode is not None and p.exitcode < 0]
    if killed:
        sig = signal.Signals(-procs[killed[0]].exitcode).name
        return f"rank {killed[0]} died (killed by {sig})"
    abrupt = [r for r, e in errors.items() if not e]  # exited without reporting why
    if abrupt and procs[abrupt[0]].exitcode == 143:  # its SIGTERM handler ran: sent from outside
        return f"rank {abrupt[0]} was stopped by SIGTERM"
    if abrupt:
        return f"rank {abrupt[0]} exited with code {procs[abrupt[0]].exitcode}"
    own = [r for r, e in errors.items() if e and not is_peer_error(e)]
    if own:
        return f"rank {own[0]} failed: {errors[own[0]]}"
    stuck = [r for r, p in enumerate(procs) if p.exitcode is None]
    if stuck:
        first = min(errors)
        return (
            f"rank {stuck[0]} is stuck: no response within the {timeout:g} s collective "
            f"timeout (rank {first} reported: {errors[first] or 'no message'})"
        )
    first = min(errors, default=0)
    return f"rank {first} failed: {errors[first] or f'exit code {procs[first].exitcode}'}"


def stop_all(procs: list) -> None:
    """SIGTERM every live process, then SIGKILL what is left after a grace period."""
    procs = [proc for proc in procs if proc.pid is not None]  # a signal can come mid-start
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGKILL to this process when the parent dies."""
    set_parent_death_signal(signal.SIGKILL)


@dataclass(frozen=True)
class Inherited:
    """What a spawned interpreter would have taken from the parent and a fork of the
    server must be given: the working directory and environment as they are at launch
    (the server kept those of its own start), and the launcher to die with."""

    cwd: str
    environ: dict[str, str]
    launcher: int

    @classmethod
    def now(cls) -> Inherited:
        return cls(os.getcwd(), dict(os.environ), os.getpid())

    def apply(self) -> None:
        # The server is this process's parent and outlives a killed launcher while any of
        # its children lives, so the parent-death signal alone would leave ranks running.
        die_with(self.launcher)
        os.chdir(self.cwd)
        os.environ.clear()
        os.environ.update(self.environ)


def _child(
    rank: int,
    job: Job,
    cfg_json: str,
    paths: RunPaths,
    start: float,
    port: int,
    threads: int,
    inherited: Inherited,
) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides how Ctrl-C ends a run
    signal.signal(signal.SIGTERM, raise_terminated)  # unwinds, so the events are flushed
    inherited.apply()
    try:
        # inside the try: an entry that fails to import is this rank's error, reported
        cfg = parse_config(cfg_json, load_entry(job.entry))
        torch.set_num_threads(threads)
        store = dist.TCPStore(
            "127.0.0.1", port, is_master=False, timeout=timedelta(seconds=cfg.timeout)
        )
        backend = "nccl" if resolve_device(cfg, rank).type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            store=store,
            rank=rank,
            world_size=job.world,
            timeout=timedelta(seconds=cfg.timeout),
        )
        run_worker(cfg, job, RankSetup(rank, paths, start, local_rank=rank))
        dist.barrier()  # every rank is past its last message before any rank leaves
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the parent
        _exit_reporting(paths, rank, exc)
    _exit_quietly()


def _exit_quietly() -> None:
    """Leave without tearing the process group down: the records are written and closed,
    and gloo's teardown can abort the process (std::terminate, SIGABRT) when the peers close
    their sockets at the same moment, turning a finished run into a failed one."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _exit_reporting(paths: RunPaths, rank: int, exc: BaseException) -> None:
    """Report this rank's error to the parent and exit at once. A rank stopped by SIGTERM
    (by the parent, or from outside) has no error of its own to report."""
    code = 143 if isinstance(exc, Terminated) else 1
    try:
        if code == 1:
            write_error(paths, rank, exc)
    finally:
        os._exit(code)
