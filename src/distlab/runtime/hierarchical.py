"""The hierarchical exchange: shared memory among the ranks of each host, gloo between hosts.

With several ranks on each of several hosts, the ranks of one host form a group that talks
through shared memory (`ShmCommunicator` over a process group of the host's ranks), and the
first rank of each host, its leader, talks to the other hosts' leaders through a gloo group
of the leaders. An allreduce is a sum on the host, an allreduce among the leaders, and a
broadcast on the host; a broadcast goes from its source to its host, from that host's leader
to the other leaders, and from each of them to its host.

Summation order: a host sums its ranks in recursive-doubling order and the leaders sum the
hosts' sums in recursive-doubling order again. When the ranks of a host are contiguous (as
torchrun numbers them) and both the host count and the ranks per host are powers of two,
that is the order of the flat exchange, ((a+b)+(c+d)), so the result is bitwise the flat
gloo result; in any layout it is bitwise the same on every rank (every non-leader copies
its leader's result).

Counting: each call counts what this rank hands in and gets back, as the flat exchange
does (Communicator's rule), so the counts equal the flat run's. A non-leader counts the
payload of an allreduce in and out although its bytes never leave the host; the leaders'
traffic between hosts is that same payload, not counted a second time.

Point to point: within a host through shared memory, between hosts through a gloo group of
all ranks of its own (`flat`), so that a receive it posts ahead (for a receive from any
rank) never takes a message meant for another user of the default group.
gather, and what does not fit, go through that group as one flat call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
import torch.distributed as dist

from distlab.runtime.comm import Communicator, SoloCommunicator, TorchCommunicator, _nbytes


def group_hosts(keys: list[int]) -> list[list[int]]:
    """The ranks of each host, hosts in the order of their first rank. A rank whose key is
    0 (it cannot map shared memory) is a host of its own."""
    hosts: dict = {}
    for rank, key in enumerate(keys):
        hosts.setdefault(key or ("alone", rank), []).append(rank)
    return list(hosts.values())


def make_hierarchical(
    keys: list[int], timeout: float, attach: Callable, on_host: Callable
) -> HierarchicalCommunicator | None:
    """The hierarchical communicator of this rank, given every rank's host key; None (on
    every rank alike) when no host holds two ranks, or when some host could not map its
    segments. `attach(group)` maps the segments of a host's group (shm.attach_host), and
    `on_host(segments, timeout, group)` is the host's communicator (shm.ShmCommunicator).
    Collective over the default group: every rank creates every host's group, the leaders'
    group and the flat group, in the same order."""
    hosts = group_hosts(keys)
    if all(len(ranks) == 1 for ranks in hosts):
        return None
    rank = dist.get_rank()
    flat = dist.new_group(list(range(dist.get_world_size())))
    groups = {ranks[0]: dist.new_group(ranks) for ranks in hosts if len(ranks) > 1}
    leaders = dist.new_group([ranks[0] for ranks in hosts])
    mine = next(ranks for ranks in hosts if rank in ranks)
    segments = attach(groups[mine[0]]) if len(mine) > 1 else None
    ok = torch.tensor([int(len(mine) == 1 or segments is not None)])
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)  # every host has its segments, or none uses them
    if not ok.item():
        return None
    local = (
        on_host(segments, timeout, groups[mine[0]]) if segments is not None else SoloCommunicator()
    )
    cross = TorchCommunicator(leaders) if rank == mine[0] else None
    return HierarchicalCommunicator(hosts, local, cross, flat)


class HierarchicalCommunicator(TorchCommunicator):
    """TorchCommunicator over `flat` (all ranks, in rank order) whose sum-allreduce,
    broadcast, barrier, point-to-point calls and exchange go through the host's shared
    memory and the leaders' gloo group (module docstring). `local` talks to the ranks of
    this host (by their index there), `cross` to the other hosts' leaders (on a leader only,
    else None). What does not fit (another reduce op, a CUDA tensor) goes through `flat`,
    counted alike."""

    def __init__(
        self,
        hosts: list[list[int]],
        local: Communicator,
        cross: TorchCommunicator | None,
        flat: dist.ProcessGroup,
    ) -> None:
        super().__init__(flat)
        self.transport = "hierarchical"
        self.hosts, self.local, self.cross = hosts, local, cross
        self.host_of = {r: i for i, ranks in enumerate(hosts) for r in ranks}
        self.here = self.host_of[self.rank]
        self.mine = hosts[self.here]
        self.pending: dict[int, Posted] = {}
        self.turn = 0

    # --- collectives ---

    def all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> None:
        if op != dist.ReduceOp.SUM or tensor.dtype == torch.bool or not self._fits(tensor):
            return super().all_reduce(tensor, op)
        n = _nbytes(tensor)
        with self._counted(n, n):
            self.local.all_reduce(tensor)
            if self.cross is not None:
                self.cross.all_reduce(tensor)
            self.local.broadcast(tensor, 0)

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        if not self._fits(tensor):
            return super().broadcast(tensor, src)
        n = _nbytes(tensor)
        source = self.host_of[src]
        with self._counted(*((n, 0) if self.rank == src else (0, n))):
            if self.here == source:
                self.local.broadcast(tensor, self.mine.index(src))
            if self.cross is not None:
                self.cross.broadcast(tensor, source)  # leaders' group ranks are host indices
            if self.here != source:
                self.local.broadcast(tensor, 0)

    def barrier(self) -> None:
        with self._counted(0, 0):
            self.local.barrier()
            if self.cross is not None:
                self.cross.barrier()
            self.local.barrier()

    # --- point to point ---

    def send(self, tensor: torch.Tensor, dst: int) -> None:
        if not self._near(tensor, dst):
            return super().send(tensor, dst)
        with self._counted(_nbytes(tensor), 0):
            self.local.send(tensor, self.mine.index(dst))

    def recv(self, tensor: torch.Tensor, src: int | None = None) -> int:
        if src is None:
            return self._recv_any(tensor)
        if src in self.pending:
            with self._counted(0, _nbytes(tensor)):
                return self._take(tensor, src)
        if not self._near(tensor, src):
            return super().recv(tensor, src)
        with self._counted(0, _nbytes(tensor)):
            self.local.recv(tensor, self.mine.index(src))
        return src

    def _recv_any(self, tensor: torch.Tensor) -> int:
        """The first message from any rank. With peers on this host and on others, a
        receive from each remote rank is posted (and kept, for a later call, when a message
        from this host comes first) while this host's outboxes are polled. A gloo receive
        says it is complete only once waited for, so a thread waits for each."""
        far = [r for r in range(self.world) if self.host_of[r] != self.here]
        if not far or not self._near(tensor, None):
            return self._recv_one_kind(tensor, far)
        for r in far:
            if r not in self.pending:
                self.pending[r] = Posted(tensor, self._global(r), self.group)
        got: list[int] = []

        def ready() -> bool:
            self.turn += 1
            checks = (self._arrived_far, self._arrived_near)
            return any(check(tensor, far, got) for check in checks[:: 1 - 2 * (self.turn % 2)])

        with self._counted(0, _nbytes(tensor)):
            self.local._wait_for(self.local._peers(), ready, f"a send to rank {self.rank}")
            src = got[0]
            return self._take(tensor, src) if src in self.pending else src

    def _recv_one_kind(self, tensor: torch.Tensor, far: list[int]) -> int:
        """Any-source receive where every peer is reached one way: all on this host, or
        (no shared memory for this size, or a host of one) all through `flat`."""
        if far and self.pending:
            raise RuntimeError(
                f"rank {self.rank}: a receive from any rank of {_nbytes(tensor)} bytes while "
                f"receives of another size are posted"
            )
        if far:
            return super().recv(tensor)
        with self._counted(0, _nbytes(tensor)):
            return self.mine[self.local.recv(tensor)]

    def _arrived_far(self, tensor: torch.Tensor, far: list[int], got: list[int]) -> bool:
        for r in far:
            if self.pending[r].done.is_set():
                got.append(r)
                return True
        return False

    def _arrived_near(self, tensor: torch.Tensor, far: list[int], got: list[int]) -> bool:
        index: list[int] = []
        if self.local._try_any(tensor, index):
            got.append(self.mine[index[0]])
            return True
        return False

    def _take(self, tensor: torch.Tensor, src: int) -> int:
        """The message of `src` that a posted receive holds (waiting for it if need be)."""
        buffer = self.pending.pop(src).result()
        if buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            raise RuntimeError(
                f"rank {src} sent a {tuple(buffer.shape)} {buffer.dtype} tensor to rank "
                f"{self.rank}, which expected {tuple(tensor.shape)} {tensor.dtype}"
            )
        tensor.copy_(buffer)
        return src

    def exchange(self, tensor: torch.Tensor, peers: list[int]) -> list[torch.Tensor]:
        """The remote sends and receives are posted first (gloo progresses them in the
        background), then this host's part goes through shared memory."""
        if not peers or not self._fits(tensor) or len(set(peers)) != len(peers):
            return super().exchange(tensor, peers)
        near = [p for p in peers if self._near(tensor, p)]
        out = {p: torch.empty_like(tensor) for p in peers if p not in near}
        n = _nbytes(tensor) * len(peers)
        with self._counted(n, n):
            requests = [dist.isend(tensor, self._global(p), group=self.group) for p in out]
            requests += [dist.irecv(o, self._global(p), group=self.group) for p, o in out.items()]
            if near:
                got = self.local.exchange(tensor, [self.mine.index(p) for p in near])
                out.update(zip(near, got, strict=True))
            for request in requests:
                request.wait()
        return [out[p] for p in peers]

    # --- fitting ---

    def _fits(self, tensor: torch.Tensor) -> bool:
        return tensor.device.type == "cpu" and tensor.is_contiguous()

    def _near(self, tensor: torch.Tensor, peer: int | None) -> bool:
        """Whether a message to or from `peer` (None: any on this host) goes through shared
        memory: on this host, and small enough for an outbox. Both ends decide alike."""
        if isinstance(self.local, SoloCommunicator):
            return False
        if peer is not None and (self.host_of.get(peer) != self.here or peer == self.rank):
            return False
        index = None if peer is None else self.mine.index(peer)
        return self.local._fits_message(tensor, index)


class Posted:
    """A receive posted ahead into a buffer like `tensor`, and a thread that waits for it."""

    def __init__(self, tensor: torch.Tensor, src: int, group: dist.ProcessGroup) -> None:
        self.buffer = torch.empty_like(tensor)
        self.work = dist.irecv(self.buffer, src, group=group)
        self.error: BaseException | None = None
        self.done = threading.Event()
        threading.Thread(target=self._wait, daemon=True).start()

    def _wait(self) -> None:
        try:
            self.work.wait()
        except BaseException as exc:  # handed to the rank that takes the message
            self.error = exc
        finally:
            self.done.set()

    def result(self) -> torch.Tensor:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.buffer
