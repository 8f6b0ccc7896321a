"""Network probe: point-to-point and allreduce time against message size between a job's
ranks, over the Communicator the strategies use, fitted to the alpha-beta model.

Every rank enters `probe`; rank 0 times a ping-pong with the last rank (under torchrun the
last rank is on the last node, so the pair crosses the link where there is one) and the
allreduce of every rank, at sizes 4 B, 16 B, ... up to `max_bytes`, taking the median of
`repeats` after one untimed call. The sizes stop before one that would take longer than
`max_seconds` (4 times the last): on a slow link 16 MB would take seconds per message, and a
shaper's queue that long slows a message by more than its bandwidth (the acknowledgements
wait behind the data), which no model of a training step's messages should learn from.
The fit (experiments/whatif.py fit_link) and the file are the command's (cli/network.py).

    torchrun --nnodes 2 --nproc-per-node 1 ... -m distlab probe-network --out link.json
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from distlab.config import RunConfig
from distlab.runtime.comm import Communicator

SIZES = tuple(4**k for k in range(1, 13))  # 4 B .. 16 MiB


@dataclass(frozen=True)
class ProbeOptions:
    """What to measure: message sizes up to `max_bytes`, `repeats` timed calls a size (their
    median counts), no size that would take longer than `max_seconds`, and the
    link's nominal rate in bytes per second if known (for the wire-over-payload factor)."""

    max_bytes: int = SIZES[-1]
    repeats: int = 5
    max_seconds: float = 0.25
    link_rate: float | None = None

    def sizes(self) -> list[int]:
        return [size for size in SIZES if size <= self.max_bytes]


def check_options(options: ProbeOptions) -> None:
    """ValueError in one line for options that measure nothing."""
    if options.max_bytes < SIZES[1]:
        raise ValueError(f"--max-bytes must be >= {SIZES[1]} (two sizes to fit a line to)")
    if options.repeats < 1:
        raise ValueError(f"--repeats must be >= 1 (got {options.repeats})")
    if not options.max_seconds > 0:
        raise ValueError(f"--max-seconds must be > 0 (got {options.max_seconds})")


def check_out(out: Path) -> Path:
    """The file the result goes to, refused before anything is measured when it cannot be."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a directory; give a file name, e.g. link.json")
    if not out.parent.is_dir():
        raise ValueError(f"--out {str(out)!r}: no directory {str(out.parent)!r}")
    return out


def probe(cfg: RunConfig, options: ProbeOptions) -> dict | None:
    """Join the launcher's process group and measure; on rank 0 what was measured and
    where (the caller fits and writes it), None on the other ranks."""
    import torch.distributed as dist

    from distlab.runtime.environ import external_env
    from distlab.runtime.launchers.external import _init_group, rendezvous
    from distlab.runtime.shm import make_communicator

    env = external_env()
    if env is None:
        raise ValueError(
            "probe-network needs 2 processes or more: run it under torchrun (--nnodes 2 ...) "
            "or with --workers 2"
        )
    rank, world, _ = env
    torch.set_num_threads(cfg.threads or 1)
    store = rendezvous(cfg, rank, world)
    _init_group(cfg, rank, world, torch.device("cpu"), store)
    try:
        comm = make_communicator(cfg, torch.device("cpu"))
        times = measure(comm, options)
        kind = type(comm).__name__
    finally:
        dist.destroy_process_group()
    if rank != 0:
        return None
    where = {"world": world, "communicator": kind, "intra_node": cfg.intra_node}
    where |= {"host": platform.node(), "pid": os.getpid(), "options": asdict(options)}
    return {**where, **times}


def measure(comm: Communicator, options: ProbeOptions) -> dict[str, list]:
    """Median one-way point-to-point seconds and allreduce seconds at each size (rank 0's
    clock; the other ranks' lists are theirs and unused)."""
    peer = comm.world - 1
    sizes, p2p, allreduce = [], [], []
    for size in options.sizes():
        tensor = torch.zeros(max(1, size // 4))
        one_way = [ping_pong(comm, tensor, peer) / 2 for _ in range(options.repeats + 1)][1:]
        summed = allreduce_times(comm, tensor, options.repeats + 1)[1:]
        sizes.append(size)
        p2p.append(statistics.median(one_way))
        allreduce.append(statistics.median(summed))
        # the next size takes about 4 times as long: stop before it passes max_seconds
        if not go_on(comm, 4 * max(p2p[-1], allreduce[-1]) <= options.max_seconds):
            break
    return {"sizes_bytes": sizes, "p2p_seconds": p2p, "allreduce_seconds": allreduce}


def ping_pong(comm: Communicator, tensor: torch.Tensor, peer: int) -> float:
    """Seconds of one round trip of `tensor` between rank 0 and `peer` (0 on other ranks)."""
    comm.barrier()
    start = time.perf_counter()
    if comm.rank == 0:
        comm.send(tensor, peer)
        comm.recv(tensor, peer)
    elif comm.rank == peer:
        comm.recv(tensor, 0)
        comm.send(tensor, 0)
    return time.perf_counter() - start


def allreduce_times(comm: Communicator, tensor: torch.Tensor, calls: int) -> list[float]:
    """Seconds of each of `calls` allreduces one after the other, as a training loop makes
    them: no barrier between calls. A barrier before each would make every call start in step
    on all ranks, which training never does; on a shaped link (tc tbf) the unsynchronized
    calls of a training loop took about twice as long per byte as barrier-aligned ones."""
    comm.barrier()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        comm.all_reduce(tensor)
        times.append(time.perf_counter() - start)
    return times


def go_on(comm: Communicator, fast_enough: bool) -> bool:
    """Rank 0's verdict on every rank: each has to stop after the same size."""
    flag = torch.tensor([1.0 if fast_enough else 0.0])
    comm.broadcast(flag, 0)
    return bool(flag.item())
