"""Communicator: every collective and point-to-point call goes through here and is counted.

`Communicator` is the interface and the counting; a transport implements the calls.
`TorchCommunicator` moves tensors through a torch.distributed process group (gloo, NCCL);
`ShmCommunicator` (runtime/shm.py) is TorchCommunicator with the calls between CPU ranks of
one host going through shared memory; `HierarchicalCommunicator` (runtime/hierarchical.py)
joins the hosts of a multi-host group (shared memory on each host, gloo between one rank per
host); shm.make_communicator picks one. `SoloCommunicator` is a
rank alone, for a context without a process group (one Hogwild thread, a Flower client, a
board on a serial line). Every transport reports through the same
`stats()`, so bytes are comparable across paradigms.

Counting rule (payload, not wire bytes): for send/recv the tensor's bytes; for a collective,
the bytes this rank hands in plus the bytes it gets back. A transport that relays (the
hierarchical exchange) counts what the call hands in and gives back, as the flat one does.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from contextlib import contextmanager

import torch
import torch.distributed as dist


class Communicator(ABC):
    """The counted transport every strategy talks through."""

    transport = "none"
    """How this communicator moves tensors (recorded in each rank's start event)."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self.bytes_sent = 0
        self.bytes_recv = 0
        self.calls = 0
        self.seconds = 0.0

    @contextmanager
    def _counted(self, sent: int, recv: int):
        start = time.perf_counter()
        yield
        self.count(sent, recv, time.perf_counter() - start)

    def count(self, sent: int, recv: int, seconds: float = 0.0) -> None:
        """Count traffic made by a call outside this class (the DDP comm hook, a transport
        that moves bytes its own way)."""
        self.bytes_sent += sent
        self.bytes_recv += recv
        self.seconds += seconds
        self.calls += 1

    def counters(self) -> dict[str, float]:
        """The running totals, for a checkpoint."""
        return {"sent": self.bytes_sent, "recv": self.bytes_recv, "calls": self.calls,
                "seconds": self.seconds}  # fmt: skip

    def restore_counters(self, counters: dict[str, float]) -> None:
        """Continue the totals of a checkpoint: a resumed run counts what it moved before."""
        self.bytes_sent, self.bytes_recv = int(counters["sent"]), int(counters["recv"])
        self.calls, self.seconds = int(counters["calls"]), float(counters["seconds"])

    def stats(self) -> dict[str, float]:
        return {
            "bytes_sent": self.bytes_sent,
            "bytes_recv": self.bytes_recv,
            "calls": self.calls,
            "comm_seconds": round(self.seconds, 6),
        }

    @abstractmethod
    def all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> None:
        """Reduce `tensor` across ranks in place (sum by default)."""

    @abstractmethod
    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        """Overwrite `tensor` on every rank with rank `src`'s."""

    @abstractmethod
    def send(self, tensor: torch.Tensor, dst: int) -> None:
        """Send `tensor` to rank `dst` (blocking)."""

    @abstractmethod
    def recv(self, tensor: torch.Tensor, src: int | None = None) -> int:
        """Receive into `tensor`; src=None takes the first sender. Returns the sender."""

    @abstractmethod
    def gather(self, tensor: torch.Tensor, dst: int = 0) -> list[torch.Tensor] | None:
        """Every rank's `tensor`, on rank `dst` (None elsewhere)."""

    def exchange(self, tensor: torch.Tensor, peers: list[int]) -> list[torch.Tensor]:
        """Send `tensor` to every rank in `peers` and receive one tensor of its shape and
        dtype from each, in the order of `peers`. Counted as one send and one recv per peer.
        A transport without point-to-point calls supports only an empty `peers`."""
        if peers:
            raise NotImplementedError(f"{type(self).__name__} has no point-to-point exchange")
        return []

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `tensor` (the same shape and dtype on each), in rank order: how
        compressed updates, which cannot be summed as they travel, reach every rank. One
        exchange with every other rank, counted as such: (N - 1) x its bytes each way."""
        peers = [r for r in range(self.world) if r != self.rank]
        out = self.exchange(tensor, peers)
        out.insert(self.rank, tensor)
        return out

    @abstractmethod
    def barrier(self) -> None:
        """Wait until every rank reaches this point."""


class SoloCommunicator(Communicator):
    """A rank alone: collectives over one rank return the input unchanged and move nothing;
    point-to-point calls have no peer and raise."""

    transport = "solo"

    def __init__(self) -> None:
        super().__init__(0, 1)

    def all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> None:
        return None

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        return None

    def send(self, tensor: torch.Tensor, dst: int) -> None:
        raise RuntimeError(f"a solo rank has no peer to send to (dst {dst})")

    def recv(self, tensor: torch.Tensor, src: int | None = None) -> int:
        raise RuntimeError(f"a solo rank has no peer to receive from (src {src})")

    def gather(self, tensor: torch.Tensor, dst: int = 0) -> list[torch.Tensor] | None:
        return [tensor.clone()]

    def barrier(self) -> None:
        return None


class TorchCommunicator(Communicator):
    """Counted calls over one torch.distributed process group."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        super().__init__(dist.get_rank(group), dist.get_world_size(group))
        self.group = group
        self.transport = str(dist.get_backend(group))

    def all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> None:
        n = _nbytes(tensor)
        with self._counted(n, n):
            if op == dist.ReduceOp.SUM and self._doubling_fits(tensor):
                self._sum_by_recursive_doubling(tensor)
            else:
                dist.all_reduce(tensor, op=op, group=self.group)

    def _doubling_fits(self, tensor: torch.Tensor) -> bool:
        # On CPU, gloo's ring allreduce makes several round trips per call; for small power-of-
        # two groups one pairwise exchange per doubling round is faster (bench/RESULTS.md).
        return (
            tensor.device.type == "cpu"
            and 1 < self.world <= 8
            and not self.world & (self.world - 1)
        )

    def _sum_by_recursive_doubling(self, tensor: torch.Tensor) -> None:
        """Sum across ranks in log2(N) rounds: swap the running sum with rank ^ 2^k, add.
        a + b == b + a exactly, so every rank ends with bitwise the same result."""
        scratch = torch.empty_like(tensor)
        mask = 1
        while mask < self.world:
            peer = self._global(self.rank ^ mask)
            for request in (
                dist.isend(tensor, peer, group=self.group),
                dist.irecv(scratch, peer, group=self.group),
            ):
                request.wait()
            tensor.add_(scratch)
            mask <<= 1

    def _global(self, group_rank: int) -> int:
        if self.group is None:
            return group_rank
        return dist.get_global_rank(self.group, group_rank)

    def _local(self, global_rank: int) -> int:
        if self.group is None:
            return global_rank
        return dist.get_group_rank(self.group, global_rank)

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        n = _nbytes(tensor)
        sent, recv = (n, 0) if self.rank == src else (0, n)
        with self._counted(sent, recv):
            dist.broadcast(tensor, src=self._global(src), group=self.group)

    def send(self, tensor: torch.Tensor, dst: int) -> None:
        with self._counted(_nbytes(tensor), 0):
            dist.send(tensor, dst=self._global(dst), group=self.group)

    def recv(self, tensor: torch.Tensor, src: int | None = None) -> int:
        """Receive into `tensor`; src=None takes the first sender. Returns the sender's rank."""
        with self._counted(0, _nbytes(tensor)):
            peer = None if src is None else self._global(src)
            return self._local(dist.recv(tensor, src=peer, group=self.group))

    def exchange(self, tensor: torch.Tensor, peers: list[int]) -> list[torch.Tensor]:
        """All sends and receives are posted at once (isend/irecv), so no order of blocking
        calls between neighbours can deadlock."""
        out = [torch.empty_like(tensor) for _ in peers]
        n = _nbytes(tensor) * len(peers)
        with self._counted(n, n):
            requests = [dist.isend(tensor, self._global(p), group=self.group) for p in peers]
            requests += [
                dist.irecv(o, self._global(p), group=self.group)
                for p, o in zip(peers, out, strict=True)
            ]
            for request in requests:
                request.wait()
        return out

    def gather(self, tensor: torch.Tensor, dst: int = 0) -> list[torch.Tensor] | None:
        n = _nbytes(tensor)
        if self.rank == dst:
            out = [torch.empty_like(tensor) for _ in range(self.world)]
            with self._counted(n, n * self.world):
                dist.gather(tensor, out, dst=self._global(dst), group=self.group)
            return out
        with self._counted(n, 0):
            dist.gather(tensor, None, dst=self._global(dst), group=self.group)
        return None

    def ddp_hook(self, compress: bool | torch.dtype = False):
        """A DistributedDataParallel comm hook that averages each bucket through this
        communicator's own all_reduce (shared memory or the hierarchy where it has them),
        counted there. The steps of DDP's default hooks, in their order: (cast to fp16 or
        the dtype `compress` names, as fp16_compress_hook and bf16_compress_hook do,)
        divide by the world, sum, (cast back). The reduce is done in the hook, so the
        Future it returns is already complete."""
        dtype = torch.float16 if compress is True else compress

        def hook(state, bucket):
            buffer = bucket.buffer()
            tensor = buffer.to(dtype) if compress else buffer
            tensor.div_(self.world)
            self.all_reduce(tensor)
            if compress:
                buffer.copy_(tensor)
            done = torch.futures.Future()
            done.set_result(buffer)
            return done

        return hook

    def barrier(self) -> None:
        with self._counted(0, 0):
            dist.barrier(group=self.group)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
