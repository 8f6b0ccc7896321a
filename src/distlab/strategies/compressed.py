"""A compressed exchange among data-parallel workers (allreduce, ddp, local-sgd).

Compressed updates cannot be summed as they travel (two top-k payloads keep different
coordinates), so each worker encodes its own update with the run's chain, the payloads go
to every worker in one counted all_gather, and every worker decodes all of them and sums
them in rank order: bitwise the same sum on every rank, so the models stay equal. A few
float64 statistics (a loss, sample counts) ride at the end of the payload, so a step is
one exchange of (N - 1) x (payload + 8 x stats) bytes each way per worker.

DDP runs its own comm hooks: `cast_hook` (fp16, bf16 through the communicator), `chain_hook`
(a chain per gradient bucket) and `powersgd_hook` (PyTorch's PowerSGD hook, Vogels et al.
2019, "PowerSGD: Practical Low-Rank Gradient Compression for Distributed Optimization",
with the tensors it allreduces counted in the communicator).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from distlab.training import flat_params, set_flat_params
from distlab.transforms.chain import Chain, make_chain

if TYPE_CHECKING:
    from distlab.runtime.comm import Communicator
    from distlab.runtime.context import WorkerContext

STAT_BYTES = 8  # one float64 statistic after the payload

# DDP runs these as PyTorch's own hooks; every other compressor goes through a chain.
DDP_CASTS = {"fp16": torch.float16, "bf16": torch.bfloat16}


def gather_sum(
    comm: Communicator, chain: Chain, update: torch.Tensor, stats: list[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode this rank's flat `update` (sender id: its rank), all_gather the payloads with
    `stats` appended, decode every rank's. Returns the sum of the decoded updates (on the
    update's device) and the sums of the statistics (float64)."""
    payload = chain.encode(update.detach().reshape(1, -1).cpu(), np.array([comm.rank]))[0]
    trailer = torch.tensor(stats, dtype=torch.float64).view(torch.uint8)
    message = torch.cat([payload, trailer]).to(update.device)
    rows = torch.stack(comm.all_gather(message)).cpu()
    size = chain.payload_bytes
    total = chain.decode(rows[:, :size]).sum(dim=0)
    # a copy: the stats follow a payload of any byte count, off a float64's alignment
    tail = rows[:, size:].clone(memory_format=torch.contiguous_format)
    sums = tail.view(torch.float64).sum(dim=0) if stats else torch.zeros(0, dtype=torch.float64)
    return total.to(update.device), sums


def exchange_bytes(chain_bytes: int, stats: int, world: int) -> int:
    """Analytic bytes one worker moves in one gather_sum: its message to each of the N - 1
    others and theirs back."""
    return 2 * (world - 1) * (chain_bytes + STAT_BYTES * stats)


def refuse_powersgd(cfg, strategy: str) -> None:
    """PowerSGD sums every worker's factors P, then Q, by allreduce, one power iteration over
    the sum (Vogels et al. 2019); a worker-by-worker exchange of payloads is not that."""
    if cfg.compress.names[:1] == ["powersgd"]:
        raise ValueError(
            f"compress.kind=powersgd is not carried by {strategy}: PowerSGD allreduces the "
            "workers' factors, which this exchange of compressed payloads does not; use "
            "--strategy ddp (PyTorch's PowerSGD hook)"
        )


def payload_size(cfg, shapes: list[tuple[int, ...]]) -> int:
    """Bytes of one update's payload under cfg.compress (without building a run)."""
    chain = make_chain(cfg.compress, shapes, cfg.seed)
    return chain.payload_bytes if chain is not None else 4 * sum(int(np.prod(s)) for s in shapes)


# --- DDP comm hooks ----------------------------------------------------------------------------


def done(tensor: torch.Tensor) -> torch.futures.Future:
    future = torch.futures.Future()
    future.set_result(tensor)
    return future


class BucketChains:
    """One chain per DDP gradient bucket (a flat run of gradients, sized by bucket_mb). DDP
    lays its buckets out anew after the first step (and again in a resumed process), so the
    error feedback memory is kept per parameter: lent to a bucket's chain before it encodes,
    taken back after, and saved in checkpoints with the chains' random streams."""

    def __init__(self, ctx: WorkerContext, model) -> None:
        self.ctx = ctx
        self.position = {id(p): i for i, p in enumerate(model.parameters())}
        self.chains: dict[int, Chain] = {}
        self.memory: dict[int, torch.Tensor] = {}  # parameter position -> its memory
        self.gens: dict[int, torch.Tensor] = {}  # a checkpoint's streams, until their bucket

    def chain(self, index: int, numel: int) -> Chain:
        chain = self.chains.get(index)
        if chain is None or chain.numel != numel:
            cfg = self.ctx.cfg
            chain = make_chain(cfg.compress, [(numel,)], cfg.seed, self.ctx.rank * 1000 + index)
            if index in self.gens:
                chain.gen.set_state(self.gens.pop(index))
            self.chains[index] = chain
        return chain

    def hook(self, state, bucket):  # no annotation: DDP checks it against its own type
        """The bucket's mean gradient over the ranks, each rank's part compressed."""
        buffer = bucket.buffer()
        chain = self.chain(bucket.index(), buffer.numel())
        params = [self.position[id(p)] for p in bucket.parameters()]
        sizes = [g.numel() for g in bucket.gradients()]
        feedback = chain.cfg.error_feedback and sum(sizes) == chain.numel
        if feedback:
            self.lend(chain, params, sizes)
        total, _ = gather_sum(self.ctx.comm, chain, buffer, [])
        if feedback:
            row = chain.memory[self.ctx.rank]
            self.memory.update(
                {p: m.clone() for p, m in zip(params, row.split(sizes), strict=True)}
            )
        buffer.copy_(chain.aggregate(total / self.ctx.world))
        return done(buffer)

    def lend(self, chain: Chain, params: list[int], sizes: list[int]) -> None:
        """This bucket's parameters' memory as the chain's row for this rank."""
        rows = [self.memory.get(p, torch.zeros(n)) for p, n in zip(params, sizes, strict=True)]
        chain.memory = torch.zeros(self.ctx.rank + 1, chain.numel)
        chain.memory[self.ctx.rank] = torch.cat(rows)

    def state_dict(self) -> dict:
        gens = {i: c.gen.get_state() for i, c in self.chains.items()}
        return {"memory": self.memory, "gens": gens}

    def load_state_dict(self, state: dict) -> None:
        self.memory, self.gens = dict(state["memory"]), dict(state["gens"])


class CountedPowerSgd:
    """PyTorch's PowerSGD hook with the tensors it allreduces counted in the communicator:
    the whole bucket before start_powerSGD_iter, afterwards the uncompressed tensors (biases,
    small matrices), the Ps and the Qs. The hook adds the element counts it hands to
    allreduce to state.total_numel_after_compression, so the difference over one call is
    exactly their sum."""

    def __init__(self, ctx: WorkerContext, group) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as power

        compress = ctx.cfg.compress
        self.comm, self.power = ctx.comm, power
        self.state = power.PowerSGDState(
            process_group=group,
            matrix_approximation_rank=compress.rank,
            start_powerSGD_iter=2,
            use_error_feedback=compress.error_feedback,
            warm_start=True,
        )

    def hook(self, state, bucket):  # no annotation: DDP checks it against its own type
        buffer = bucket.buffer()
        size = buffer.element_size()
        if self.state.iter < self.state.start_powerSGD_iter:
            self.comm.count(buffer.numel() * size, buffer.numel() * size)
            return self.power.powerSGD_hook(self.state, bucket)
        before = self.state.total_numel_after_compression
        future = self.power.powerSGD_hook(self.state, bucket)
        index = bucket.index()
        p = self.state.p_memory_dict[index].numel()
        q = self.state.q_memory_dict[index].numel()
        plain = self.state.total_numel_after_compression - before - p - q
        for numel in (plain, p, q):
            self.comm.count(numel * size, numel * size)
        return future

    def state_dict(self) -> dict:
        """Iteration, error feedback and the warm-start Ps and Qs, per bucket. PyTorch keys
        them by bucket index, and a resumed process's first step runs on DDP's initial
        buckets, not the rebuilt ones they were saved from: a resumed PowerSGD run goes on
        from this state but not bit for bit (BucketChains keeps its memory per parameter)."""
        s = self.state
        return {"iter": s.iter, "error": s.error_dict, "p": s.p_memory_dict, "q": s.q_memory_dict}

    def load_state_dict(self, state: dict) -> None:
        s = self.state
        s.iter = state["iter"]
        s.error_dict, s.p_memory_dict, s.q_memory_dict = state["error"], state["p"], state["q"]


def powersgd_numel(shapes: list[tuple[int, ...]], rank: int, min_rate: float = 2.0) -> int:
    """Values one worker allreduces per step under PowerSGD: each parameter read as an
    n x m matrix (n = shape[0]) sends (n + m) r factors where that is at least `min_rate`
    times fewer than n m (PyTorch's rule, min_compression_rate 2), else its n m values."""
    total = 0
    for shape in shapes:
        n = shape[0] if shape else 1
        m = int(np.prod(shape)) // n
        factors = (n + m) * min(n, m, rank)
        total += factors if factors * min_rate < n * m else n * m
    return total


def register_ddp_compression(ctx: WorkerContext, model, fp16: bool) -> object | None:
    """Register DDP's comm hook for the run's compress.kind: a cast, PowerSGD or a chain.
    Returns what a checkpoint keeps of it (None when it keeps nothing)."""
    names = ctx.cfg.compress.names
    if not names or names[0] in DDP_CASTS:
        dtype = DDP_CASTS[names[0]] if names else (torch.float16 if fp16 else None)
        model.register_comm_hook(None, ctx.comm.ddp_hook(compress=dtype or False))
        return None
    if names[0] == "powersgd":
        holder = CountedPowerSgd(ctx, getattr(ctx.comm, "group", None))
        if ctx.is_lead:  # the analytic side of its bytes needs the shapes: ddp's summary reads it
            shapes = [tuple(p.shape) for p in model.parameters()]
            numel = powersgd_numel(shapes, ctx.cfg.compress.rank)
            ctx.recorder.phase(
                "powersgd",
                numel_per_step=numel,
                dense_numel=sum(int(np.prod(s)) for s in shapes),
                start_iter=holder.state.start_powerSGD_iter,
            )
    else:
        holder = BucketChains(ctx, model)
    model.register_comm_hook(None, holder.hook)
    return holder


# --- local SGD -----------------------------------------------------------------------------


class DeltaAveraging:
    """Local SGD's averaging with compressed updates: each worker sends its model's change
    since the shared start point, weighted by its samples since the last averaging (sender
    id: its rank, so error feedback carries across averagings); every worker adds the
    weighted mean of the decoded changes to the start point, the new shared model."""

    def __init__(self, ctx: WorkerContext, chain: Chain, model) -> None:
        self.ctx, self.chain = ctx, chain
        self.start = flat_params(model)

    def restart(self, model) -> None:
        """The workers' models are equal again (a warmup allreduce step): the new start."""
        self.start = flat_params(model)

    def average(self, model, loss: float, n: float, since: float) -> float:
        """Replace `model` by the new shared model; returns the workers' mean loss."""
        delta = (flat_params(model) - self.start) * since
        stats = [loss * n, n, since]
        total, (loss_sum, samples, weight) = gather_sum(self.ctx.comm, self.chain, delta, stats)
        self.start = self.start + self.chain.aggregate(total / weight)
        set_flat_params(model, self.start.clone())  # the parameters become views of it
        return float(loss_sum) / float(samples)

    def state_dict(self) -> dict:
        return {"start": self.start, "chain": self.chain.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.start = state["start"]
        self.chain.load_state_dict(state["chain"])
