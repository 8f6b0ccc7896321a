"""The shared launcher: N local processes that share one model in memory, no process group.

For strategies whose ranks talk by reading and writing the same memory rather than by
messages (Hogwild!: Niu, Recht, Re and Wright 2011). The parent builds the run's model with
the seeded builder every rank would use (WorkerContext.build_model's), moves it to shared
memory (torch.multiprocessing semantics: `share_memory_()`) and adds a lock and per-rank
counters; each rank finds them in `ctx.shared`, next to a `SharedMemoryComm` whose one call
is a barrier. The processes are started by spawn and watched, their failures named and
Ctrl-C/SIGTERM handled by the spawn launcher's own functions. One machine, CPU memory only.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distlab.config import RunConfig
from distlab.data.datasets import Dataset, load_dataset
from distlab.models import build_model
from distlab.runtime.comm import Communicator
from distlab.runtime.failures import WORKER_NAME
from distlab.runtime.launchers.spawn import (
    _die_with_parent,
    _exit_reporting,
    watch_until_done,
)
from distlab.runtime.signals import raise_terminated
from distlab.runtime.worker import Job, RankSetup, load_entry, parse_config, run_worker

if TYPE_CHECKING:
    from distlab.runs.directory import RunPaths

# The shared objects live in this machine's memory: the ranks compute where they are.
SHARED_DEVICE = torch.device("cpu")


class SharedMemoryComm(Communicator):
    """A rank of a group that shares memory, not messages: no payload is moved, so none is
    counted (the shared memory is the channel). Its one call is a barrier with a timeout;
    the message calls refuse, naming what to use instead."""

    def __init__(self, rank: int, world: int, barrier, timeout: float) -> None:
        super().__init__(rank, world)
        self._barrier, self._timeout = barrier, timeout

    def barrier(self) -> None:
        with self._counted(0, 0):
            try:
                self._barrier.wait(self._timeout)
            except threading.BrokenBarrierError:
                # "timed out" marks it a peer error: the launcher names the rank that never came
                raise TimeoutError(
                    f"rank {self.rank} timed out after {self._timeout:g} s at a barrier: "
                    "a peer never arrived"
                ) from None

    def _no_messages(self, call: str) -> RuntimeError:
        return RuntimeError(
            f"{call}: ranks of the shared launcher have no process group; they share "
            "ctx.shared (the model in shared memory), not messages"
        )

    def all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> None:
        raise self._no_messages("all_reduce")

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        raise self._no_messages("broadcast")

    def send(self, tensor: torch.Tensor, dst: int) -> None:
        raise self._no_messages("send")

    def recv(self, tensor: torch.Tensor, src: int | None = None) -> int:
        raise self._no_messages("recv")

    def gather(self, tensor: torch.Tensor, dst: int = 0) -> list[torch.Tensor] | None:
        raise self._no_messages("gather")


def launch_shared(
    cfg: RunConfig,
    job: Job,
    run_dir: Path,
    start: float,
    data: Dataset | None = None,
    on_event: Callable | None = None,
    follow: Callable[[], None] | None = None,
) -> None:
    """Spawn `world` processes sharing one model in memory and wait; RunFailed names the
    first rank that failed. KeyboardInterrupt and Terminated (SIGTERM) stop every process
    and become RunInterrupted and RunTerminated. `data` gives the model's shapes; `follow`
    is called while they run, as by the spawn launcher."""
    refuse_cuda(cfg)
    context, world = mp.get_context("spawn"), job.world
    data = data or load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
    shared = make_shared(cfg, data, world, context)
    # One torch thread per process unless --threads says otherwise: the processes are the
    # parallelism, and more threads than cores would only make them take turns.
    threads = cfg.threads or 1
    paths = job.paths(run_dir)
    args = (job, cfg.model_dump_json(), paths, start, threads, shared)
    barrier = context.Barrier(world)
    procs = [
        context.Process(
            target=_child, args=(rank, *args, barrier), name=f"{WORKER_NAME}{rank}", daemon=True
        )
        for rank in range(world)
    ]
    watch_until_done(procs, cfg, paths, follow, on_event)


def refuse_cuda(cfg: RunConfig, who: str = "the shared launcher") -> None:
    """The shared objects live in CPU memory; a run that asked for CUDA must not quietly
    train on the CPU. A strategy on this launcher calls it from its config check, so the
    refusal comes before anything is written."""
    if cfg.device == "cuda":
        raise ValueError(
            f"{who} shares one model in this machine's CPU memory; --device must be cpu or "
            "auto (got cuda)"
        )


def make_shared(cfg: RunConfig, data: Dataset, world: int, context) -> dict:
    """What the ranks share: the run's model with the seeded initial weights every rank
    would build, in shared memory; one lock; per-rank counters of steps and samples, each
    rank writing only its own slot (so the counters need no lock)."""
    model = build_model(cfg.model, data.input_shape, data.classes, cfg.seed).to(SHARED_DEVICE)
    return {
        "model": model.share_memory(),
        "lock": context.Lock(),
        "steps": torch.zeros(world, dtype=torch.int64).share_memory_(),
        "samples": torch.zeros(world, dtype=torch.int64).share_memory_(),
    }


def _child(
    rank: int,
    job: Job,
    cfg_json: str,
    paths: RunPaths,
    start: float,
    threads: int,
    shared: dict,
    barrier,
) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides how Ctrl-C ends a run
    signal.signal(signal.SIGTERM, raise_terminated)  # unwinds, so the events are flushed
    try:
        cfg = parse_config(cfg_json, load_entry(job.entry))
        torch.set_num_threads(threads)
        comm = SharedMemoryComm(rank, job.world, barrier, cfg.timeout)
        setup = RankSetup(rank, paths, start, comm=comm, device=SHARED_DEVICE, shared=shared)
        run_worker(cfg, job, setup)
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the parent
        _exit_reporting(paths, rank, exc)
