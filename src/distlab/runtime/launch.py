"""Start the processes of a run, or join a launcher that already started them.

Locally, `launch_local` spawns one process per rank, watches them, and turns the first
death or exception into a RunFailed that names the rank; the other ranks are stopped and
none outlives the parent (PR_SET_PDEATHSIG). Under torchrun, mpirun or Slurm every process
calls `join_external`, which reads its rank from the environment; there the ranks agree on
each check before the run starts and report failures through the launcher's store, so rank 0
can name the cause as the local launcher does. While a run is in progress SIGTERM (kill,
timeout, scancel, docker stop) stops it like Ctrl-C: processes stopped, record written.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import re
import resource
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from multiprocessing import connection, get_context
from pathlib import Path

import torch
import torch.distributed as dist

from distlab.config import RunConfig
from distlab.data.datasets import Dataset, load_dataset
from distlab.metrics import EventTail, Recorder
from distlab.models import count_parameters
from distlab.runtime.comm import TorchCommunicator
from distlab.runtime.context import WorkerContext, move_dataset, seed_generators
from distlab.strategies import get_spec, register, spec_ref
from distlab.training import compute_gradients, make_optimizer

STOP_GRACE_SECONDS = 3.0
PEER_ERROR_HINTS = ("connection", "timed out", "timeout", "socket", "peer", "gloo", "closed")
TIMEOUT_HINTS = ("timed out", "timeout")
# Seconds rank 0 of an externally launched run waits for the other ranks' reports of a failure.
REPORT_WAIT_SECONDS = 3.0
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
        raise SystemExit(UNGUARDED_EXIT)
    raise RuntimeError(unguarded_message())


# --- SIGTERM ----------------------------------------------------------------------------------


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
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if ours else None
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


def _raise_terminated(signum: int, frame: object) -> None:
    # Once only: a second SIGTERM must not cut short the cleanup the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def hold_sigterm() -> None:
    """The run is being recorded from here on: a SIGTERM now is ignored, not raised into the
    middle of writing summary.json."""
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGTERM) is _raise_terminated:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def notify(on_event: Callable | None, text: str) -> None:
    """A status line for the launcher's display while the run is slow to start."""
    if on_event is not None:
        on_event({"kind": "status", "text": text})


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
        params = warm_up(ctx)
        recorder.phase(
            "start",
            pid=os.getpid(),
            device=str(device),
            threads=torch.get_num_threads(),
            lead_rank=lead,
            params=params if rank == lead else None,
        )
        # Start the clock of the "train" phase on every rank at once: spawned interpreters
        # come up seconds apart on a busy machine, and the first step would absorb the wait.
        comm.barrier()
        notify(on_event, "training")
        spec.run(ctx, cfg.strategy)
        recorder.comm_totals()
        recorder.phase("end", peak_rss_mb=peak_rss_mb())
    finally:
        recorder.close()


def warm_up(ctx: WorkerContext) -> int:
    """Pay one-time costs before the barrier, so that no rank pays them on the clock: the
    first optimizer imports torch's compiler stack (about a second), the first backward pass
    starts autograd's threads and the first update initializes the optimizer's kernels. The
    model is thrown away and the random streams are left as they were. Returns the model's
    parameter count."""
    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        model = ctx.build_model()
        optimizer = make_optimizer(model.parameters(), ctx.cfg.optimizer)
        batch = slice(0, ctx.cfg.batch_size)
        compute_gradients(model, ctx.data.x_train[batch], ctx.data.y_train[batch])
        optimizer.step()
    return count_parameters(model)


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
        errors = read_errors(run_dir, [0])
        raise RunFailed(f"rank 0 failed: {errors.get(0, repr(exc))}", errors) from exc
    finally:
        dist.destroy_process_group()
        torch.set_num_threads(previous)


# --- N local processes ------------------------------------------------------------------------


def launch_local(
    cfg: RunConfig,
    world: int,
    run_dir: Path,
    start: float,
    on_event: Callable | None = None,
) -> None:
    """Spawn `world` processes and wait; RunFailed names the first rank that failed.
    KeyboardInterrupt and Terminated (SIGTERM) stop every process and become RunInterrupted
    and RunTerminated. `on_event` gets status events and the lead rank's events."""
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
    procs = [
        ctx.Process(target=_child, args=(rank, *args), name=f"{WORKER_NAME}{rank}", daemon=True)
        for rank in range(world)
    ]
    tail = EventTail(run_dir / "events" / "rank-0.jsonl", _announce_training(on_event))
    try:
        notify(on_event, f"starting {world} processes")
        for proc in procs:
            proc.start()
        notify(on_event, f"waiting for {world} processes to join")
        _watch(procs, run_dir, cfg.timeout, tail.poll)
        tail.poll()
    except KeyboardInterrupt:
        stop_all(procs)
        raise RunInterrupted("interrupted by the user; all processes stopped") from None
    except Terminated:
        stop_all(procs)
        raise RunTerminated("terminated by SIGTERM; all processes stopped") from None
    finally:
        stop_all(procs)
        del store


def _announce_training(on_event: Callable | None) -> Callable | None:
    """Pass the lead rank's events on, with a "training" status line when training starts."""
    if on_event is None:
        return None

    def forward(event: dict) -> None:
        if event.get("phase") == "train":
            notify(on_event, "training")
        on_event(event)

    return forward


def _watch(procs: list, run_dir: Path, timeout: float, on_poll: Callable | None) -> None:
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
            errors = read_errors(run_dir, range(len(procs)))
            raise RunFailed(describe_failure(procs, run_dir, timeout), errors)


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
    if abrupt and procs[abrupt[0]].exitcode == 143:  # its SIGTERM handler ran: sent from outside
        return f"rank {abrupt[0]} was stopped by SIGTERM"
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


def read_errors(run_dir: Path, ranks) -> dict[int, str]:
    """{rank: "Type: message"} of the ranks that reported an error."""
    found = {rank: read_error(run_dir, rank) for rank in ranks}
    return {rank: message for rank, message in found.items() if message}


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
    signal.signal(signal.SIGTERM, _raise_terminated)  # unwinds, so the events are flushed
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
        _exit_reporting(Path(run_dir), rank, exc)


def _exit_reporting(run_dir: Path, rank: int, exc: BaseException) -> None:
    """Report this rank's error to the parent and exit at once. A rank stopped by SIGTERM
    (by the parent, or from outside) has no error of its own to report."""
    code = 143 if isinstance(exc, Terminated) else 1
    try:
        if code == 1:
            write_error(run_dir, rank, exc)
    finally:
        os._exit(code)


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


def local_world_size(world: int, environ: dict[str, str] | None = None) -> int:
    """How many of the run's processes share this machine (for the default thread count)."""
    env = os.environ if environ is None else environ
    for key in ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"):
        if env.get(key, "").isdigit() and int(env[key]) > 0:
            return int(env[key])
    per_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]  # Slurm writes "2(x3)"
    return int(per_node) if per_node.isdigit() and int(per_node) > 0 else world


def is_follower() -> bool:
    """True in a launcher-started process other than rank 0: it leaves all output to rank 0."""
    env = external_env()
    return env is not None and env[0] != 0


def join_external(
    cfg: RunConfig,
    rank: int,
    world: int,
    local_rank: int,
    prepare: Callable[[], Path],
    finish: Callable[[Path, str, RunFailed | None], None],
    start: float,
    data: Dataset | None = None,
    on_event: Callable | None = None,
) -> Path:
    """Enter the run from a launcher's process and return the run directory.

    Rank 0 prepares the run directory and tells every rank its path or its error, so bad
    input ends every rank with the same ValueError. Once the run has started, rank 0 calls
    `finish(run_dir, status, failure)` whatever the outcome; a failed rank reports through
    the launcher's store, which outlives it, so RunFailed on rank 0 names the rank that
    caused the failure. SIGTERM (Terminated) ends every rank with RunTerminated."""
    torch.set_num_threads(thread_count(cfg, local_world_size(world)))
    device = resolve_device(cfg, local_rank)
    notify(on_event, f"waiting for {world} processes to join")
    try:
        store = rendezvous(cfg, rank, world)
        _init_group(cfg, rank, world, device, store)
    except Terminated:
        raise RunTerminated("terminated while the processes were joining") from None
    shared = dist.PrefixStore("distlab", store)
    try:
        run_dir = Path(_agree_or_stop(prepare, rank, device))
        _run_reporting(cfg, rank, world, local_rank, run_dir, start, data, shared, finish, on_event)
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
        store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=timeout))
    except dist.DistError as exc:
        raise RunFailed(_rendezvous_failure(str(exc), world, cfg.timeout)) from None
    return store


def _rendezvous_failure(message: str, world: int, timeout: float) -> str:
    joined = re.search(r"(\d+)/\d+ clients joined", message)
    if joined:  # rank 0, which hosts the store, counts itself among the clients
        return f"rendezvous timed out: {joined[1]} of {world} processes joined within {timeout:g} s"
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    return f"rendezvous failed: rank 0 did not answer at {where} within {timeout:g} s"


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
            f"{cfg.timeout:g} s ({_first_line(exc)})"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


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
            kind, text = BROKEN, f"{type(exc).__name__}: {_first_line(exc)}"
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


def _run_reporting(
    cfg: RunConfig,
    rank: int,
    world: int,
    local_rank: int,
    run_dir: Path,
    start: float,
    data: Dataset | None,
    shared,
    finish: Callable[[Path, str, RunFailed | None], None],
    on_event: Callable | None,
) -> None:
    """Run this rank's worker. A failure is reported through the store, and rank 0 turns the
    reports into the cause; rank 0 records the run whatever happens."""
    status, failure = "failed", None
    try:
        run_worker(cfg, rank, world, run_dir, start, local_rank, data, on_event)
        dist.barrier()  # rank 0 merges the events once every rank has written its last
        status = "completed"
    except BaseException as exc:  # noqa: BLE001 - reported, then raised as the run's outcome
        try:
            failure = _report_failure(exc, cfg, rank, world, run_dir, shared)
        except Terminated:  # SIGTERM landed while this rank reported: stopped, not failed
            failure = _report_failure(Terminated(), cfg, rank, world, run_dir, shared)
        status = failure.status if isinstance(failure, RunInterrupted) else "failed"
    finally:
        hold_sigterm()
        if rank == 0:
            finish(run_dir, status, failure if isinstance(failure, RunFailed) else None)
    if failure is not None:
        raise failure


def _report_failure(
    exc: BaseException, cfg: RunConfig, rank: int, world: int, run_dir: Path, shared
) -> RunFailed | RunInterrupted:
    """Tell the other ranks how this rank ended and return the exception that ends it: on
    rank 0 the run's outcome, named from every rank's report; elsewhere a quiet one."""
    hold_sigterm()
    stopped = isinstance(exc, Terminated | KeyboardInterrupt)
    message = "" if stopped else f"{type(exc).__name__}: {_first_line(exc)}"
    _post(shared, f"report/{rank}", json.dumps({"stopped": stopped, "message": message}))
    if not stopped:
        try:
            write_error(run_dir, rank, exc)  # with the traceback, as local ranks leave it
        except OSError:
            pass  # another machine without the shared directory: the store has it
    if rank != 0:
        return (
            stopped_error(exc, run_dir) if stopped else RunFailed(f"rank {rank} failed: {message}")
        )
    got = _collect_reports(shared, world)
    errors = {r: m for r, (was_stopped, m) in got.items() if not was_stopped}
    own = any(not _is_peer_error(m) for m in errors.values())
    if stopped and not own and len(got) == world:
        return stopped_error(exc, run_dir)  # all answered, none failed of itself: stopped
    # Stopped with a rank silent: torchrun stops the others when one dies, so it is a failure.
    return RunFailed(_describe_reports(got, world, cfg.timeout), errors)


def stopped_error(exc: BaseException, run_dir: Path) -> RunInterrupted:
    """The exception a run stopped by SIGTERM (Terminated) or Ctrl-C ends with."""
    if isinstance(exc, Terminated | RunTerminated):
        return RunTerminated(f"terminated by SIGTERM; partial run kept in {run_dir}")
    return RunInterrupted(f"interrupted; partial run kept in {run_dir}")


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
    own = [r for r, m in errors.items() if not _is_peer_error(m)]
    if own:
        return f"rank {own[0]} failed: {errors[own[0]]}"
    silent = [r for r in range(world) if r not in got]
    first = min(errors, default=None)
    said = f"rank {first} reported: {errors[first]}" if first is not None else "others stopped"
    if silent and any(_is_timeout(m) for m in errors.values()):
        return (
            f"rank {silent[0]} is stuck: no response within the {timeout:g} s collective "
            f"timeout ({said})"
        )
    if silent:
        return f"rank {silent[0]} died without a report ({said})"
    if first is None:
        return "every rank was stopped"
    return f"rank {first} failed: {errors[first]}"


def _is_timeout(message: str) -> bool:
    low = message.lower()
    return any(hint in low for hint in TIMEOUT_HINTS)
