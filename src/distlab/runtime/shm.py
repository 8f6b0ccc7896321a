"""Shared memory between the CPU ranks of one host: the segments and `ShmCommunicator`.

Every rank owns one anonymous file (memfd) that the other ranks of the host map through
/proc/PID/fd/N. It never has a name in /dev/shm, so a killed run leaks nothing: the memory
goes when the last process that maps it ends. A rank writes only into its own file: its data,
then the sequence flag that publishes it (one writer per flag, so no atomics are needed; x86
keeps stores in order, and the segments are used on x86-64 only). Readers poll the writers'
flags. Each file holds, at fixed offsets (the file is sparse: pages cost memory once
touched):

    flags       collective sequence; per peer: messages sent to it, messages taken from it,
                the size of the message in each of its slots
    collective  two buffers, alternating per call, so no second barrier is needed
    outboxes    per peer, SLOTS buffers that carry point-to-point messages in order

An allreduce sums the ranks' buffers in the order of recursive doubling, ((a+b)+(c+d)) for
four ranks, so every rank ends bitwise equal to the others and, for a power-of-two group, to
TorchCommunicator's gloo result.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import platform
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist

from distlab.runtime.comm import TorchCommunicator, _nbytes
from distlab.runtime.environ import STARTTIME, stat_fields
from distlab.runtime.hierarchical import HierarchicalCommunicator, make_hierarchical

if TYPE_CHECKING:
    from distlab.config import RunConfig

PAGE = mmap.PAGESIZE
COLLECTIVE_BYTES = 64 << 20
"""Capacity of each collective buffer; a bigger tensor goes through gloo."""
OUTBOX_BUDGET = 512 << 20
"""Virtual bytes of all of one rank's outboxes together; each slot gets its share."""
SLOTS = 2
"""Messages a rank may post to one peer before that peer takes the first. gloo's send waits
for the matching recv, so any order of calls that works over gloo works here. The slots are
used in turn: a pair touches at most SLOTS times its largest message."""
SPIN_TRIES = 2000
YIELD_SECONDS = 0.002
CHECK_SECONDS = 0.05
"""How often a waiting rank looks whether the ranks it waits for are still alive."""


class PeerTimeout(RuntimeError):
    """A peer did not arrive within the collective timeout."""


class PeerDied(RuntimeError):
    """A peer's process ended while this rank waited for it."""


class HostSegments:
    """Every rank's file on this host, mapped; flags as int64 arrays, data as tensor views."""

    def __init__(self, rank: int, world: int, maps: list[mmap.mmap], procs: list[tuple]) -> None:
        self.rank, self.world, self.maps, self.procs = rank, world, maps, procs
        self.flags = [np.frombuffer(m, dtype=np.int64, count=flag_count(world)) for m in maps]
        self.header = header_bytes(world)
        self.slot_bytes = slot_bytes(world)
        self._views: dict[tuple[int, int, int], torch.Tensor] = {}

    def view(self, rank: int, offset: int, nbytes: int) -> torch.Tensor:
        """Bytes [offset, offset + nbytes) of `rank`'s file as a uint8 tensor (cached)."""
        key = (rank, offset, nbytes)
        if key not in self._views:
            self._views[key] = torch.frombuffer(
                self.maps[rank], dtype=torch.uint8, count=nbytes, offset=offset
            )
        return self._views[key]

    def collective(self, rank: int, seq: int, nbytes: int) -> torch.Tensor:
        return self.view(rank, self.header + (seq % 2) * COLLECTIVE_BYTES, nbytes)

    def outbox(self, rank: int, peer: int, slot: int, nbytes: int) -> torch.Tensor:
        index = peer * SLOTS + slot
        return self.view(rank, self.header + 2 * COLLECTIVE_BYTES + index * self.slot_bytes, nbytes)

    def alive(self, rank: int) -> bool:
        """The process is there, not a zombie, and the same one (start time) as at attach."""
        pid, started = self.procs[rank]
        return process_start(pid) == started


# --- layout ------------------------------------------------------------------------------------


def flag_count(world: int) -> int:
    return 1 + 2 * world + world * SLOTS


def header_bytes(world: int) -> int:
    return -(-flag_count(world) * 8 // PAGE) * PAGE


def slot_bytes(world: int) -> int:
    return max(PAGE, OUTBOX_BUDGET // (world * SLOTS) // PAGE * PAGE)


def file_bytes(world: int) -> int:
    return header_bytes(world) + 2 * COLLECTIVE_BYTES + world * SLOTS * slot_bytes(world)


# flag indices in a rank's file
COLLECTIVE_SEQ = 0


def sent_to(peer: int) -> int:
    return 1 + peer


def taken_from(peer: int, world: int) -> int:
    return 1 + world + peer


def size_of(peer: int, slot: int, world: int) -> int:
    return 1 + 2 * world + peer * SLOTS + slot


# --- attaching ---------------------------------------------------------------------------------


def host_key() -> int:
    """Equal on two ranks only when they share a kernel boot, a PID namespace (their
    /proc/PID paths name each other) and an x86-64 CPU (whose store order the flags rely on);
    a rank that cannot use the segments answers 0, which no other rank matches."""
    if platform.machine() not in ("x86_64", "AMD64") or not hasattr(os, "memfd_create"):
        return 0
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return 0
    digest = hashlib.sha256(f"{socket.gethostname()}|{boot}|{pid_ns}".encode()).digest()
    return int.from_bytes(digest[:8], "little", signed=True) or 1


def process_start(pid: int) -> int | None:
    """The start time of a live process from /proc/PID/stat; None if gone or a zombie."""
    try:
        fields = stat_fields(pid)
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[STARTTIME])


def attach_host(group: dist.ProcessGroup | None = None) -> HostSegments | None:
    """Map every rank's file when all ranks of the group run on this host; None (on every
    rank) otherwise. Collective over `group`: every rank must call it."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    key = host_key()
    fd = create_file(world) if key else -1
    mine = torch.tensor([key, os.getpid(), fd], dtype=torch.int64)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    keys, pids, fds = zip(*(t.tolist() for t in every), strict=True)
    maps = open_files(pids, fds) if key and len(set(keys)) == 1 else None
    ok = torch.tensor([int(maps is not None)])
    dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=group)  # every rank has opened them
    if fd >= 0:
        os.close(fd)  # the mappings keep the file
    if not ok.item() or maps is None:
        return None
    procs = [(pid, process_start(pid)) for pid in pids]
    return HostSegments(rank, world, maps, procs)


def create_file(world: int) -> int:
    try:
        fd = os.memfd_create("distlab-shm", os.MFD_CLOEXEC)
        os.ftruncate(fd, file_bytes(world))
    except OSError:
        return -1
    return fd


def open_files(pids, fds) -> list[mmap.mmap] | None:
    maps = []
    try:
        for pid, fd in zip(pids, fds, strict=True):
            peer = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR)
            try:
                maps.append(mmap.mmap(peer, os.fstat(peer).st_size))
            finally:
                os.close(peer)
    except (OSError, ValueError):
        return None
    return maps


# --- the communicator --------------------------------------------------------------------------


class ShmCommunicator(TorchCommunicator):
    """TorchCommunicator whose calls between the CPU ranks of one host go through shared
    memory; what does not fit (another reduce op, a CUDA tensor, a tensor larger than a
    buffer) goes through the process group as before. Counted the same way. `group` is the
    process group of the host's ranks (the default group when all ranks are here); errors
    name ranks of the default group."""

    transport = "shm"

    def __init__(
        self, host: HostSegments, timeout: float, group: dist.ProcessGroup | None = None
    ) -> None:
        super().__init__(group)
        self.transport = "shm"
        self.host, self.timeout = host, timeout
        self.mine = host.flags[self.rank]
        self.seq = 0
        self.sent = [0] * self.world
        self.taken = [0] * self.world
        self.next_source = 0

    # --- collectives ---

    def all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> None:
        if op != dist.ReduceOp.SUM or tensor.dtype == torch.bool or not self._fits(tensor):
            return super().all_reduce(tensor, op)
        n = _nbytes(tensor)
        with self._counted(n, n):
            seq = self._post(tensor)
            self._wait_all(seq, "all_reduce")
            parts = [
                self._typed(self.host.collective(r, seq, n), tensor) for r in range(self.world)
            ]
            sum_in_doubling_order(parts, tensor.view(-1))

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        if not self._fits(tensor):
            return super().broadcast(tensor, src)
        n = _nbytes(tensor)
        sent, recv = (n, 0) if self.rank == src else (0, n)
        with self._counted(sent, recv):
            seq = self._post(tensor if self.rank == src else None)
            if self.rank != src:
                self._wait_for([src], lambda: self._arrived(src, seq), "broadcast")
                as_bytes(tensor).copy_(self.host.collective(src, seq, n))

    def gather(self, tensor: torch.Tensor, dst: int = 0) -> list[torch.Tensor] | None:
        if not self._fits(tensor):
            return super().gather(tensor, dst)
        n = _nbytes(tensor)
        if self.rank != dst:
            with self._counted(n, 0):
                self._post(tensor)
            return None
        with self._counted(n, n * self.world):
            seq = self._post(tensor)
            self._wait_all(seq, "gather")
            return [
                self._typed(self.host.collective(r, seq, n), tensor).clone().view_as(tensor)
                for r in range(self.world)
            ]

    def barrier(self) -> None:
        with self._counted(0, 0):
            self._wait_all(self._post(None), "barrier")

    def _post(self, tensor: torch.Tensor | None) -> int:
        """Write this rank's part of the next collective and publish it. The buffer written
        was last read two calls ago; every peer has posted since then (it posts at the start
        of each call), so it has finished reading it."""
        seq = self.seq + 1
        self._wait_for(
            self._peers(), lambda: self._all_arrived(seq - 1), "the previous collective", seq - 1
        )
        if tensor is not None:
            self.host.collective(self.rank, seq, _nbytes(tensor)).copy_(as_bytes(tensor))
        self.mine[COLLECTIVE_SEQ] = seq
        self.seq = seq
        return seq

    def _arrived(self, rank: int, seq: int) -> bool:
        return self.host.flags[rank][COLLECTIVE_SEQ] >= seq

    def _all_arrived(self, seq: int) -> bool:
        return all(flags[COLLECTIVE_SEQ] >= seq for flags in self.host.flags)

    def _wait_all(self, seq: int, op: str) -> None:
        self._wait_for(self._peers(), lambda: self._all_arrived(seq), op, seq)

    # --- point to point ---

    def send(self, tensor: torch.Tensor, dst: int) -> None:
        if not self._fits_message(tensor, dst):
            return super().send(tensor, dst)
        with self._counted(_nbytes(tensor), 0):
            self._wait_for(
                [dst],
                lambda: self._try_send(tensor, dst),
                f"its recv from rank {self._global(self.rank)}",
            )

    def recv(self, tensor: torch.Tensor, src: int | None = None) -> int:
        if not self._fits_message(tensor, src):
            return super().recv(tensor, src)
        with self._counted(0, _nbytes(tensor)):
            if src is not None:
                self._wait_for(
                    [src],
                    lambda: self._try_recv(tensor, src),
                    f"its send to rank {self._global(self.rank)}",
                )
                return src
            got: list[int] = []
            self._wait_for(
                self._peers(),
                lambda: self._try_any(tensor, got),
                f"a send to rank {self._global(self.rank)}",
            )
            return got[0]

    def exchange(self, tensor: torch.Tensor, peers: list[int]) -> list[torch.Tensor]:
        """Sends and receives advance together, as gloo's isend/irecv do, so no order of
        calls between neighbours can deadlock."""
        if not peers or not all(self._fits_message(tensor, p) for p in peers):
            return super().exchange(tensor, peers)
        out = [torch.empty_like(tensor) for _ in peers]
        n = _nbytes(tensor) * len(peers)
        sends, recvs = dict.fromkeys(peers), dict(zip(peers, out, strict=True))

        def progress() -> bool:
            for p in [p for p in sends if self._try_send(tensor, p)]:
                del sends[p]
            for p in [p for p, o in recvs.items() if self._try_recv(o, p)]:
                del recvs[p]
            return not sends and not recvs

        with self._counted(n, n):
            self._wait_for(lambda: [*sends, *recvs], progress, "exchange")
        return out

    def _try_send(self, tensor: torch.Tensor, dst: int) -> bool:
        """Post `tensor` into the next slot for `dst` if `dst` has taken what it held."""
        count, world = self.sent[dst], self.world
        if self.host.flags[dst][taken_from(self.rank, world)] <= count - SLOTS:
            return False
        slot, n = count % SLOTS, _nbytes(tensor)
        self.host.outbox(self.rank, dst, slot, n).copy_(as_bytes(tensor))
        self.mine[size_of(dst, slot, world)] = n
        self.mine[sent_to(dst)] = self.sent[dst] = count + 1
        return True

    def _try_recv(self, tensor: torch.Tensor, src: int) -> bool:
        """Take `src`'s next message into `tensor` if it has posted one."""
        count, world, flags = self.taken[src], self.world, self.host.flags[src]
        if flags[sent_to(self.rank)] <= count:
            return False
        slot, n = count % SLOTS, _nbytes(tensor)
        size = int(flags[size_of(self.rank, slot, world)])
        if size != n:
            raise RuntimeError(
                f"rank {self._global(src)} sent {size} bytes to rank {self._global(self.rank)}, "
                f"which expected {n}"
            )
        as_bytes(tensor).copy_(self.host.outbox(src, self.rank, slot, n))
        self.mine[taken_from(src, world)] = self.taken[src] = count + 1
        return True

    def _try_any(self, tensor: torch.Tensor, got: list[int]) -> bool:
        """The first peer with a message, looking from the one after the last sender on, so
        that no sender is starved."""
        for i in range(self.world):
            src = (self.next_source + i) % self.world
            if src != self.rank and self._try_recv(tensor, src):
                self.next_source = src + 1
                got.append(src)
                return True
        return False

    # --- waiting ---

    def _wait_for(self, waited, ready: Callable[[], bool], op: str, seq: int | None = None):
        """Spin on `ready`, then yield, then nap. `waited` (a list, or a function giving one)
        are the ranks it depends on: a dead one, or the deadline, ends the wait with an
        error that names them."""
        for _ in range(SPIN_TRIES):
            if ready():
                return
        start = time.monotonic()
        check, nap = start + CHECK_SECONDS, 20e-6
        while not ready():
            now = time.monotonic()
            if now - start < YIELD_SECONDS:
                os.sched_yield()
            else:
                time.sleep(nap)
                nap = min(nap * 2, 1e-3)
            if now >= check:
                check = now + CHECK_SECONDS
                self._raise_if_lost(waited() if callable(waited) else waited, op, seq, now - start)

    def _raise_if_lost(self, waited: list[int], op: str, seq: int | None, waiting: float) -> None:
        late = [r for r in waited if seq is None or not self._arrived(r, seq)] or waited
        dead = [r for r in late if not self.host.alive(r)]
        if dead:
            raise PeerDied(f"peer rank {self._global(dead[0])} died before it reached {op}")
        if waiting > self.timeout:
            names = ", ".join(str(self._global(r)) for r in late)
            raise PeerTimeout(
                f"timed out: rank {names} did not reach {op} within {self.timeout:g} s"
            )

    # --- fitting ---

    def _peers(self) -> list[int]:
        return [r for r in range(self.world) if r != self.rank]

    def _fits(self, tensor: torch.Tensor) -> bool:
        return (
            tensor.device.type == "cpu"
            and tensor.is_contiguous()
            and 0 < _nbytes(tensor) <= COLLECTIVE_BYTES
        )

    def _fits_message(self, tensor: torch.Tensor, peer: int | None) -> bool:
        return (
            tensor.device.type == "cpu"
            and tensor.is_contiguous()
            and 0 < _nbytes(tensor) <= self.host.slot_bytes
            and (peer is None or (0 <= peer < self.world and peer != self.rank))
        )

    @staticmethod
    def _typed(raw: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return raw.view(like.dtype)


def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1).view(torch.uint8)


def sum_in_doubling_order(parts: list[torch.Tensor], out: torch.Tensor) -> None:
    """out = the sum of `parts` split in halves, left half first: ((a+b)+(c+d)) for four.
    That is what recursive doubling computes on every rank (a+b == b+a exactly), so the
    result is bitwise gloo's for a power-of-two group."""
    if len(parts) == 1:
        out.copy_(parts[0])
        return
    if len(parts) == 2:
        torch.add(parts[0], parts[1], out=out)
        return
    half = len(parts) // 2
    right = torch.empty_like(out)
    sum_in_doubling_order(parts[:half], out)
    sum_in_doubling_order(parts[half:], right)
    out.add_(right)


def make_communicator(cfg: RunConfig, device: torch.device) -> TorchCommunicator:
    """The communicator of a rank in the default process group, when cfg.intra_node is
    "auto" and the device is the CPU: shared memory when every rank runs on this host, the
    hierarchy (runtime/hierarchical.py) when some host holds several ranks, the process
    group alone otherwise. One collective decides, on every rank alike. intra_node="gloo"
    keeps the flat process group."""
    if cfg.intra_node == "gloo" or device.type != "cpu" or dist.get_world_size() == 1:
        return TorchCommunicator()
    keys = host_keys()
    if len(set(keys)) == 1 and keys[0]:
        host = attach_host()
        return ShmCommunicator(host, cfg.timeout) if host is not None else TorchCommunicator()
    return hierarchical(keys, cfg.timeout) or TorchCommunicator()


def hierarchical(keys: list[int], timeout: float) -> HierarchicalCommunicator | None:
    """runtime/hierarchical.py's communicator over this module's segments, the hosts told
    apart by `keys` (every rank's host_key())."""
    return make_hierarchical(keys, timeout, attach_host, ShmCommunicator)


def host_keys() -> list[int]:
    """Every rank's host_key(), in rank order. Collective over the default group."""
    mine = torch.tensor([host_key()], dtype=torch.int64)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    return [int(t) for t in every]
