"""Start the processes of a run, or join a launcher that already started them.

Locally, `launch_local` spawns one process per rank, watches them, and turns the first
death or exception into a RunFailed that names the rank; the other ranks are stopped and
none outlives the parent (PR_SET_PDEATHSIG). Under torchrun, mpirun or Slurm every process
calls `join_external`, which reads its rank from the environment.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from multiprocessing import connection, get_context
from pathlib import Path

import torch
import torch.distributed as dist

from distlab.config import RunConfig
from distlab.data.datasets import Dataset, load_dataset
from distlab.metrics import Recorder
from distlab.models import count_parameters
from distlab.runtime.comm import TorchCommunicator
from distlab.runtime.context import WorkerContext, move_dataset, seed_generators
from distlab.strategies import get_spec, register, spec_ref

STOP_GRACE_SECONDS = 3.0
PEER_ERROR_HINTS = ("connection", "timed out", "timeout", "socket", "peer", "gloo", "closed")


class RunFailed(RuntimeError):
    """A rank died, raised or got stuck; the message names it."""


class RunInterrupted(RuntimeError):
    """The user pressed Ctrl-C; every process was stopped."""


def resolve_device(cfg: RunConfig, local_rank: int = 0) -> torch.device:
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if not want_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is present")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def thread_count(cfg: RunConfig, world: int) -> int:
    return cfg.threads or max(1, (os.cpu_count() or 1) // world)


def run_worker(
    cfg: RunConfig,
    rank: int,
    world: int,
    run_dir: Path | None,
    start: float,
    local_rank: int = 0,
    data: Dataset | None = None,
    on_event: Callable | None = None,
) -> None:
    """The entry point every process enters once its process group is up."""
    spec = get_spec(cfg.strategy.name)
    device = resolve_device(cfg, local_rank)
    data = move_dataset(data or load_dataset(cfg.dataset, cfg.data_dir, cfg.download), device)
    comm = TorchCommunicator()
    events = run_dir / "events" / f"rank-{rank}.jsonl" if run_dir else None
    role, lead = spec.role(cfg, rank), spec.lead(cfg)
    recorder = Recorder(
        events,
        run_name(run_dir),
        rank,
        role,
        lead=rank == lead,
        start=start,
        comm=comm,
        on_event=on_event,
    )
    ctx = WorkerContext(cfg, rank, world, role, comm, device, data, recorder, run_dir, lead)
    seed_generators(cfg.seed, rank)
    try:
        recorder.phase(
            "start",
            pid=os.getpid(),
            device=str(device),
            threads=torch.get_num_threads(),
            lead_rank=lead,
            params=count_parameters(ctx.build_model()) if rank == lead else None,
        )
        spec.run(ctx, cfg.strategy)
        recorder.comm_totals()
        recorder.phase("end", peak_rss_mb=peak_rss_mb())
    finally:
        recorder.close()


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_name(run_dir: Path | None) -> str:
    return run_dir.name if run_dir else "run"


# --- one process, in this interpreter ---------------------------------------------------------


def run_inline(
    cfg: RunConfig, run_dir: Path, start: float, data: Dataset, on_event: Callable | None = None
) -> None:
    """A one-process run inside the caller's process: a real gloo group of size 1."""
    previous = torch.get_num_threads()
    torch.set_num_threads(thread_count(cfg, 1))
    dist.init_process_group(
        "gloo", store=dist.HashStore(), rank=0, world_size=1, timeout=timedelta(seconds=cfg.timeout)
    )
    try:
        # The run seeds torch's global generator; the caller's stream is left as it was.
        with torch.random.fork_rng(devices=[]):
            run_worker(cfg, 0, 1, run_dir, start, data=data, on_event=on_event)
    except Exception as exc:  # the same one-line report as a failed rank of a larger run
        write_error(run_dir, 0, exc)
        raise RunFailed(f"rank 0 failed: {read_error(run_dir, 0)}") from exc
    finally:
        dist.destroy_process_group()
        torch.set_num_threads(previous)


# --- N local processes ------------------------------------------------------------------------


def launch_local(
    cfg: RunConfig,
    world: int,
    run_dir: Path,
    start: float,
    on_poll: Callable[[], None] | None = None,
) -> None:
    """Spawn `world` processes and wait; RunFailed names the first rank that failed."""
    store = dist.TCPStore(
        "127.0.0.1",
        0,
        world_size=None,
        is_master=True,
        wait_for_workers=False,
        timeout=timedelta(seconds=cfg.timeout),
    )
    ctx = get_context("spawn")
    ref = spec_ref(cfg.strategy.name)  # the reference travels: a child has its own registry
    args = (
        world,
        cfg.model_dump_json(),
        str(run_dir),
        start,
        store.port,
        thread_count(cfg, world),
        ref,
    )
    procs = [ctx.Process(target=_child, args=(rank, *args), daemon=True) for rank in range(world)]
    for proc in procs:
        proc.start()
    try:
        _watch(procs, run_dir, cfg.timeout, on_poll)
    except KeyboardInterrupt:
        stop_all(procs)
        raise RunInterrupted("interrupted by the user; all processes stopped") from None
    finally:
        stop_all(procs)
        del store


def _watch(procs: list, run_dir: Path, timeout: float, on_poll: Callable | None) -> None:
    pending = {p.sentinel: rank for rank, p in enumerate(procs)}
    while pending:
        ready = connection.wait(list(pending), timeout=0.2)
        if on_poll is not None:
            on_poll()
        ended = [pending.pop(s) for s in ready]
        for rank in ended:
            procs[rank].join(5)  # the sentinel fires a moment before the exit status is set
        if any(procs[rank].exitcode != 0 for rank in ended):
            time.sleep(0.3)  # let peers that fail because of it report too, then pick the cause
            raise RunFailed(describe_failure(procs, run_dir, timeout))


def describe_failure(procs: list, run_dir: Path, timeout: float) -> str:
    """Name the rank that caused the failure: a killed rank, else one that exited without a
    report, else one whose own error is not a peer/connection error, else a rank still
    blocked when the others timed out."""
    errors = {r: read_error(run_dir, r) for r, p in enumerate(procs) if p.exitcode not in (None, 0)}
    killed = [r for r, p in enumerate(procs) if p.exitcode is not None and p.exitcode < 0]
    if killed:
        sig = signal.Signals(-procs[killed[0]].exitcode).name
        return f"rank {killed[0]} died (killed by {sig})"
    abrupt = [r for r, e in errors.items() if not e]  # exited without reporting why
    if abrupt:
        return f"rank {abrupt[0]} exited with code {procs[abrupt[0]].exitcode}"
    own = [r for r, e in errors.items() if e and not _is_peer_error(e)]
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


def _is_peer_error(message: str) -> bool:
    low = message.lower()
    return any(hint in low for hint in PEER_ERROR_HINTS)


def error_path(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / "errors" / f"rank-{rank}.json"


def read_error(run_dir: Path, rank: int) -> str:
    try:
        info = json.loads(error_path(run_dir, rank).read_text())
    except (OSError, ValueError):
        return ""
    return f"{info['type']}: {info['message']}"


def stop_all(procs: list) -> None:
    """SIGTERM every live process, then SIGKILL what is left after a grace period."""
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
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _child(
    rank: int,
    world: int,
    cfg_json: str,
    run_dir: str,
    start: float,
    port: int,
    threads: int,
    ref: str,
) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides how Ctrl-C ends a run
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # A strategy registered at run time (a test, a plugin) is unknown to this fresh
    # interpreter until its reference is registered here too.
    register(json.loads(cfg_json)["strategy"]["name"], ref)
    cfg = RunConfig.model_validate_json(cfg_json)
    torch.set_num_threads(threads)
    try:
        store = dist.TCPStore(
            "127.0.0.1", port, is_master=False, timeout=timedelta(seconds=cfg.timeout)
        )
        backend = "nccl" if resolve_device(cfg, rank).type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            store=store,
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=cfg.timeout),
        )
        run_worker(cfg, rank, world, Path(run_dir), start, local_rank=rank)
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the parent
        write_error(Path(run_dir), rank, exc)
        os._exit(1)


def write_error(run_dir: Path, rank: int, exc: BaseException) -> None:
    path = error_path(run_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
    info = {
        "rank": rank,
        "type": type(exc).__name__,
        "message": message[:500],
        "traceback": traceback.format_exc(),
    }
    path.write_text(json.dumps(info))


# --- processes started by torchrun, mpirun or Slurm --------------------------------------------


def external_env(environ: dict[str, str] | None = None) -> tuple[int, int, int] | None:
    """(rank, world, local_rank) when a launcher started this process, else None."""
    env = os.environ if environ is None else environ
    for rank_key, world_key, local_key in (
        ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
        ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
        ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    ):
        if rank_key in env and world_key in env and int(env[world_key]) > 1:
            return int(env[rank_key]), int(env[world_key]), int(env.get(local_key, 0))
    return None


def join_external(
    cfg: RunConfig,
    rank: int,
    world: int,
    local_rank: int,
    make_run_dir: Callable[[], Path],
    start: float,
) -> Path:
    """Enter the worker from a launcher's process. Rank 0 makes the run directory and tells
    the others its path through the process group (no pickle)."""
    device = resolve_device(cfg, local_rank)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        init_method="env://",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=cfg.timeout),
    )
    try:
        run_dir = _share_path(make_run_dir() if rank == 0 else None, device)
        try:
            run_worker(cfg, rank, world, run_dir, start, local_rank=local_rank)
        except BaseException as exc:
            write_error(run_dir, rank, exc)
            raise
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return run_dir


def _share_path(path: Path | None, device: torch.device) -> Path:
    buf = torch.zeros(4096, dtype=torch.uint8, device=device)
    if path is not None:
        raw = str(path).encode()
        buf[: len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
    dist.broadcast(buf, src=0)
    return Path(bytes(buf.cpu().tolist()).rstrip(b"\0").decode())
