"""The external launcher: join processes started by torchrun, mpirun or Slurm.

Every process enters the same command; its rank comes from the launcher's environment. The
ranks agree on each check before the run starts (rank 0 prepares the run directory and
broadcasts its path or its error), and a failing rank reports through the launcher's store,
which outlives it, so rank 0 names the cause and writes the record as the spawn launcher
does.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from distlab.config import RunConfig
from distlab.runtime import network
from distlab.runtime.environ import elastic_restart, external_env, local_world_size, node_count
from distlab.runtime.failures import (
    RunFailed,
    RunInterrupted,
    RunTerminated,
    Terminated,
    first_line,
    is_peer_error,
    is_timeout,
    stopped_error,
    write_error,
)
from distlab.runtime.remote_events import agree_view
from distlab.runtime.signals import hold_sigterm
from distlab.runtime.worker import Job, RankSetup, notify, resolve_device, run_worker, thread_count

if TYPE_CHECKING:
    from distlab.runs.directory import RunPaths

# What rank 0 calls once the run has started, whatever its outcome: (paths, status, failure).
Finish = Callable[["RunPaths", str, RunFailed | None], None]

# Seconds rank 0 of an externally launched run waits for the other ranks' reports of a failure.
REPORT_WAIT_SECONDS = 3.0


def tell_launcher(line: str) -> None:
    """Leave this process's one-line error where torchrun looks for a failed worker's cause:
    the JSON file TORCHELASTIC_ERROR_FILE names, in the format of torch's ErrorHandler
    (torch.distributed.elastic.multiprocessing.errors), so that torchrun's failure report
    shows the line as the worker's traceback instead of a pointer to its docs. Nothing
    without torchrun."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    extra = {"py_callstack": line, "timestamp": str(int(time.time()))}
    said = {"message": line, "extraInfo": extra}
    try:
        Path(path).write_text(json.dumps({"message": said}))
    except OSError:
        pass  # torchrun then reports the exit code alone, as before


def is_follower() -> bool:
    """True in a launcher-started process other than rank 0: it leaves all output to rank 0."""
    env = external_env()
    return env is not None and env[0] != 0


def join_external(
    cfg: RunConfig, job: Job, setup: RankSetup, prepare: Callable[[], Path], finish: Finish
) -> Path:
    """Enter the run from a launcher's process and return the run directory. `setup` is
    this rank's place; its `paths` come from the directory rank 0 prepares.

    Rank 0 prepares the run directory and tells every rank its path or its error, so bad
    input ends every rank with the same ValueError. Once the run has started, rank 0 calls
    `finish(paths, status, failure)` whatever the outcome; a failed rank reports through
    the launcher's store, which outlives it, so RunFailed on rank 0 names the rank that
    caused the failure. SIGTERM (Terminated) ends every rank with RunTerminated."""
    world, rank = job.world, setup.rank
    torch.set_num_threads(thread_count(cfg, local_world_size(world)))
    device = resolve_device(cfg, setup.local_rank)
    notify(setup.on_event, f"waiting for {world} processes to join")
    try:
        store = rendezvous(cfg, rank, world)
        shared = dist.PrefixStore("distlab", store)
        _meet(cfg, rank, world, shared)
        _init_group(cfg, rank, world, device, store)
    except Terminated:
        raise RunTerminated("terminated while the processes were joining") from None
    try:
        run_dir = Path(_agree_or_stop(prepare, rank, device))
        view = agree_view(cfg, job.paths(run_dir), rank, world, job.lead, device)
        setup = dataclasses.replace(setup, paths=view.paths, view=view)
        try:
            _run_reporting(cfg, job, setup, shared, finish)
        finally:
            view.close()
    finally:
        dist.destroy_process_group()
    return run_dir


def rendezvous(cfg: RunConfig, rank: int, world: int) -> dist.Store:
    """Join the launcher's store at MASTER_ADDR:MASTER_PORT (rank 0 hosts it unless the
    launcher's agent does). Missing peers end in one line saying how many joined."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    timeout = timedelta(seconds=cfg.timeout)
    try:
        if rank != 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
            _wait_for_store(cfg.timeout)
        store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=timeout))
    except dist.DistError as exc:
        raise RunFailed(_rendezvous_failure(str(exc), world, cfg.timeout)) from None
    # torchrun's agent keeps one store across its restarts of the workers: each attempt
    # needs keys of its own, or the process group meets the dead attempt's addresses
    return dist.PrefixStore(f"attempt-{elastic_restart()}", store)


def _wait_for_store(timeout: float) -> None:
    """Wait until rank 0's store accepts connections, at most `timeout` seconds: torch's
    client backs off ever longer between tries (37 s after ten) and overruns the timeout."""
    where = (os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(where, timeout=1).close()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise dist.DistError(f"no store at {where}: {exc}") from None
            time.sleep(0.2)


def _rendezvous_failure(message: str, world: int, timeout: float) -> str:
    joined = re.search(r"(\d+)/\d+ clients joined", message)
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    nodes = node_count(world)
    if joined and nodes > 1:  # each host's launcher starts its processes: count hosts
        came = int(joined[1]) // max(1, world // nodes)
        return (
            f"rendezvous timed out: {came} of {nodes} nodes joined within {timeout:g} s: "
            f"start the run on every node with MASTER_ADDR={where.rpartition(':')[0]}, and "
            f"check that each of them reaches {where}"
        )
    if joined:  # rank 0, which hosts the store, counts itself among the clients
        return f"rendezvous timed out: {joined[1]} of {world} processes joined within {timeout:g} s"
    if nodes > 1:
        return (
            f"rendezvous failed: the node of rank 0 did not answer at {where} within "
            f"{timeout:g} s: start the run there too, or check that this node reaches it"
        )
    return f"rendezvous failed: rank 0 did not answer at {where} within {timeout:g} s"


# Every rank's host, as the ranks told each other before the process group was made.
_nodes: list[network.Node] | None = None


def _meet(cfg: RunConfig, rank: int, world: int, shared) -> None:
    """Bind the interface network.interface names, refuse an address the other hosts
    cannot reach, and learn every rank's host (through the launcher's store, so a node that
    cannot join is heard of at once); then watch this node's launcher."""
    global _nodes
    problem = ""
    try:
        network.use_interface(cfg.network.interface)
    except ValueError as exc:  # one host's mistake: the other hosts must hear of it too
        problem = str(exc)
    _nodes = network.meet(shared, rank, world, cfg.timeout, problem or network.bind_problem())
    _watch_launcher(cfg)


class LauncherLost(BaseException):
    """This node's launcher (torchrun's agent) is gone, so nothing would stop this rank: it
    stops of itself. Raised in the main thread by the watch `_watch_launcher` starts."""

    parent = 0


def _watch_launcher(cfg: RunConfig) -> None:
    """Stop this rank when its launcher dies (torchrun's workers get no death signal from
    their agent): LauncherLost in the main thread, then, if that does not end it within the
    collective timeout, an exit."""
    LauncherLost.parent = parent = os.getppid()
    main = threading.main_thread().ident
    if parent <= 1 or main is None:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(main), ctypes.py_object(LauncherLost)
        )
        time.sleep(cfg.timeout + 5)
        os._exit(1)

    threading.Thread(target=watch, name="distlab-launcher-watch", daemon=True).start()


def speaks_for_node() -> bool:
    """True in the first process of a node other than rank 0's: its error line is this
    node's (rank 0 speaks for the run)."""
    env = external_env()
    return env is not None and env[0] != 0 and env[2] == 0


def _init_group(cfg: RunConfig, rank: int, world: int, device: torch.device, store) -> None:
    try:
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            # the prefix torch gives the default group's keys when it makes the store itself
            store=dist.PrefixStore("default_pg", store),
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=cfg.timeout),
        )
    except RuntimeError as exc:  # DistError, or gloo's own when a peer never connects
        raise RunFailed(
            f"rendezvous timed out: not all {world} processes set up the process group within "
            f"{cfg.timeout:g} s ({first_line(exc)})"
        ) from None


# Rank 0's answer to a check, broadcast to every rank.
AGREED, BAD_INPUT, BROKEN = 0, 1, 2


def _agree_or_stop(step: Callable[[], object], rank: int, device: torch.device) -> str:
    try:
        return agree(step, rank, device)
    except Terminated:
        raise RunTerminated("terminated while the run was being prepared") from None


def agree(step: Callable[[], object], rank: int, device: torch.device) -> str:
    """Run `step` on rank 0 and give every rank its result as text, or raise its error on
    every rank: ValueError (bad input) as ValueError, anything else as RunFailed."""
    kind, text = AGREED, ""
    if rank == 0:
        try:
            text = str(step())
        except ValueError as exc:
            kind, text = BAD_INPUT, str(exc)
        except Exception as exc:  # noqa: BLE001 - the other ranks must hear of it too
            kind, text = BROKEN, f"{type(exc).__name__}: {first_line(exc)}"
    if kind != AGREED:
        hold_sigterm()  # the others exit on hearing it; their launcher's SIGTERM must wait
    kind, text = _broadcast_text(kind, text, rank, device)
    if kind != AGREED:
        hold_sigterm()
    if kind == BAD_INPUT:
        raise ValueError(text)
    if kind == BROKEN:
        raise RunFailed(f"rank 0 failed: {text}")
    return text


def _broadcast_text(kind: int, text: str, rank: int, device: torch.device) -> tuple[int, str]:
    """Rank 0's (kind, text) on every rank, as tensors (no pickle)."""
    raw = text.encode()
    head = torch.tensor([kind, len(raw)], dtype=torch.int64, device=device)
    dist.broadcast(head, src=0)
    kind, size = (int(v) for v in head.tolist())
    if size == 0:
        return kind, ""
    if rank == 0:
        body = torch.tensor(list(raw), dtype=torch.uint8, device=device)
    else:
        body = torch.empty(size, dtype=torch.uint8, device=device)
    dist.broadcast(body, src=0)
    return kind, bytes(body.cpu().tolist()).decode()


def _run_reporting(cfg: RunConfig, job: Job, setup: RankSetup, shared, finish: Finish) -> None:
    """Run this rank's worker. A failure is reported through the store, and rank 0 turns the
    reports into the cause; rank 0 records the run whatever happens."""
    status, failure, rank, paths = "failed", None, setup.rank, setup.paths
    try:
        run_worker(cfg, job, setup)
        dist.barrier()  # rank 0 merges the events once every rank has written its last
        status = "completed"
    except BaseException as exc:  # noqa: BLE001 - reported, then raised as the run's outcome
        try:
            failure = _report_failure(exc, cfg, rank, job.world, paths, shared)
        except Terminated:  # SIGTERM landed while this rank reported: stopped, not failed
            failure = _report_failure(Terminated(), cfg, rank, job.world, paths, shared)
        status = failure.status if isinstance(failure, RunInterrupted) else "failed"
    finally:
        hold_sigterm()
        if rank == 0:
            finish(paths, status, failure if isinstance(failure, RunFailed) else None)
    if failure is not None:
        raise failure


def _report_failure(
    exc: BaseException, cfg: RunConfig, rank: int, world: int, paths: RunPaths, shared
) -> RunFailed | RunInterrupted:
    """Tell the other ranks how this rank ended and return the exception that ends it: on
    rank 0 the run's outcome, named from every rank's report; elsewhere a quiet one."""
    hold_sigterm()
    stopped = isinstance(exc, Terminated | KeyboardInterrupt)
    message = "" if stopped else f"{type(exc).__name__}: {first_line(exc)}"
    if isinstance(exc, LauncherLost):
        message = f"LauncherLost: {_launcher_lost(rank)}"
    _post(shared, f"report/{rank}", json.dumps({"stopped": stopped, "message": message}))
    if not stopped:
        try:
            write_error(paths, rank, exc)  # with the traceback, as local ranks leave it
        except OSError:
            pass  # another machine without the shared directory: the store has it
    if rank != 0:
        return (
            stopped_error(exc, paths.root) if stopped else RunFailed(_follower_cause(rank, message))
        )
    got = _collect_reports(shared, world)
    errors = {r: m for r, (was_stopped, m) in got.items() if not was_stopped}
    own = any(not is_peer_error(m) for m in errors.values())
    if stopped and not own and len(got) == world:
        return stopped_error(exc, paths.root)  # all answered, none failed of itself: stopped
    # Stopped with a rank silent: torchrun stops the others when one dies, so it is a failure.
    return RunFailed(_name_hosts(_describe_reports(got, world, cfg.timeout), got), errors)


def _launcher_lost(rank: int) -> str:
    host = _nodes[rank].host if _nodes else "this node"
    return f"the launcher of rank {rank} on {host} (pid {LauncherLost.parent}) was killed"


def _spans_hosts() -> bool:
    return _nodes is not None and len({node.host for node in _nodes}) > 1


def _follower_cause(rank: int, message: str) -> str:
    """This rank's line: a lost link to rank 0's host named as such."""
    if not _spans_hosts() or not is_peer_error(message):
        return f"rank {rank} failed: {message}"
    assert _nodes is not None
    lead, me = _nodes[0], _nodes[rank]
    if lead.host != me.host and not network.answers(lead.address):
        return (
            f"rank 0 on {lead.host} unreachable from {me.host}: {lead.address} does not answer, "
            f"the link between the hosts is down (check it, then rerun) ({message})"
        )
    return f"rank {rank} on {me.host} failed: {message}"


def _name_hosts(cause: str, got: dict[int, tuple[bool, str]]) -> str:
    """`cause` with the host of the rank it names when the ranks span hosts; a silent rank on
    another host that does not answer any more is named unreachable."""
    named = re.match(r"rank (\d+) ", cause)
    if not _spans_hosts() or named is None:
        return cause
    assert _nodes is not None
    rank, lead = int(named[1]), _nodes[0]
    node = _nodes[rank]
    if rank not in got and node.host != lead.host and not network.answers(node.address):
        return (
            f"rank {rank} on {node.host} unreachable: {node.address} does not answer from "
            f"{lead.host}, the link between the hosts is down (check it, then rerun)"
        )
    return f"rank {rank} on {node.host} {cause[named.end() :]}"


def _post(shared, key: str, value: str) -> None:
    try:
        shared.set(key, value)
    except RuntimeError:
        pass  # the store went away with its host: rank 0 names this rank as silent


def _collect_reports(shared, world: int) -> dict[int, tuple[bool, str]]:
    """{rank: (stopped, message)} of the ranks that reported within REPORT_WAIT_SECONDS."""
    got: dict[int, tuple[bool, str]] = {}
    deadline = time.monotonic() + REPORT_WAIT_SECONDS
    while len(got) < world and time.monotonic() < deadline:
        for rank in range(world):
            report = None if rank in got else _read_report(shared, rank)
            if report is not None:
                got[rank] = (report["stopped"], report["message"])
        time.sleep(0.05)
    return got


def _read_report(shared, rank: int) -> dict | None:
    key = f"report/{rank}"
    try:
        return json.loads(shared.get(key)) if shared.check([key]) else None
    except (RuntimeError, ValueError):  # the store went away: the rank counts as silent
        return None


def _describe_reports(got: dict[int, tuple[bool, str]], world: int, timeout: float) -> str:
    """Name the rank that caused the failure, by the local launcher's rules: a rank's own
    error first, else a silent rank (stuck when the others timed out, else died), else the
    first peer error."""
    errors = {r: m for r, (stopped, m) in sorted(got.items()) if not stopped}
    own = [r for r, m in errors.items() if not is_peer_error(m)]
    if own:
        return f"rank {own[0]} failed: {errors[own[0]]}"
    silent = [r for r in range(world) if r not in got]
    first = min(errors, default=None)
    said = f"rank {first} reported: {errors[first]}" if first is not None else "others stopped"
    if silent and any(is_timeout(m) for m in errors.values()):
        return (
            f"rank {silent[0]} is stuck: no response within the {timeout:g} s collective "
            f"timeout ({said})"
        )
    if silent:
        return f"rank {silent[0]} died without a report ({said})"
    if first is None:
        return "every rank was stopped"
    return f"rank {first} failed: {errors[first]}"
