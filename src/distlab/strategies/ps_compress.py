"""The parameter server's compressed traffic (compress.kind, param_server.py).

Uplink: a worker encodes its gradient with the run's chain (senders: its rank, so error
feedback is its own) and sends the uint8 payload, followed by a float32 trailer (weighted
loss, samples, parameter version), to the server; the server decodes it, averages the
workers' gradients weighted by their samples (sync) or takes the one that arrived (async),
and steps on `chain.aggregate` of that (signSGD's majority vote takes its sign there).

Downlink (compress.downlink): the server keeps, per worker, the parameters that worker
holds, and sends it the compressed difference between its model and that copy (senders: the
worker's rank), followed by the version; both sides add the decoded difference to their copy
with the same float operations, so they agree bit for bit. The difference to the copy is
the error feedback of this direction by construction (what earlier messages dropped is still
in it), so the downlink chain keeps no memory of its own; adding one would count the dropped
part twice (the same reason DoubleSqueeze and CHOCO-gossip need none on this side).

Every payload travels through the Communicator's send and recv, so the bytes counted are the
compressed bytes; `analytic` gives their formula for the summary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from distlab.training import flat_params, set_flat_params
from distlab.transforms.chain import Chain, make_chain

if TYPE_CHECKING:
    from distlab.runtime.context import WorkerContext

SERVER = 0
# float32 values after each uplink payload: weighted loss, samples, parameter version
UP_TRAILER = 3
# Keeps the downlink chain's random stream apart from every rank's uplink stream.
DOWN_STREAM = 1 << 20


def as_bytes(values: torch.Tensor) -> torch.Tensor:
    """float32 values as the bytes that travel."""
    return values.float().contiguous().view(torch.uint8)


def as_floats(payload: torch.Tensor) -> torch.Tensor:
    # a copy: a slice after a payload of any byte count may start off a float's alignment
    return payload.clone(memory_format=torch.contiguous_format).view(torch.float32)


def down_chain(ctx: WorkerContext, model) -> Chain | None:
    """The downlink's chain (None unless compress.downlink): no error feedback memory, see
    the module doc."""
    cfg = ctx.cfg.compress
    if not cfg.downlink:
        return None
    shapes = [tuple(p.shape) for p in model.parameters()]
    return make_chain(
        cfg.model_copy(update={"error_feedback": False}), shapes, ctx.cfg.seed, DOWN_STREAM
    )


class WorkerLink:
    """A worker's compressed side: its uplink chain (with its error feedback memory, saved
    in its checkpoints) and, with downlink, the chain that decodes the server's replies."""

    def __init__(self, ctx: WorkerContext, model, up: Chain) -> None:
        self.ctx, self.model, self.up = ctx, model, up
        self.down = down_chain(ctx, model)
        size = self.down.payload_bytes if self.down else 4 * flat_params(model).numel()
        self.reply = torch.empty(size + 4, dtype=torch.uint8)

    def send(self, grad: torch.Tensor, loss: float, n: float, version: int) -> None:
        # the chain works on the CPU, where the bytes leave from
        payload = self.up.encode(grad.cpu().reshape(1, -1), np.array([self.ctx.rank]))[0]
        trailer = as_bytes(torch.tensor([loss * n, n, float(version)]))
        self.ctx.comm.send(torch.cat([payload, trailer]), SERVER)

    def receive(self) -> int:
        """The server's reply into the model; returns the version it is."""
        self.ctx.comm.recv(self.reply, SERVER)
        body, version = self.reply[:-4], int(as_floats(self.reply[-4:])[0])
        if self.down is None:
            set_flat_params(self.model, as_floats(body).clone())
        else:
            delta = self.down.decode(body.reshape(1, -1))[0]
            own = flat_params(self.model)
            set_flat_params(self.model, own + delta.to(own.device))
        return version

    def state_dict(self) -> dict:
        return {"up": self.up.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.up.load_state_dict(state["up"])


class ServerLink:
    """The server's compressed side: decodes the workers' payloads, and sends each worker
    its reply (the parameters, or their compressed difference to the worker's copy)."""

    def __init__(self, ctx: WorkerContext, model, up: Chain, workers: int) -> None:
        self.ctx, self.model, self.up, self.workers = ctx, model, up, workers
        self.down = down_chain(ctx, model)
        self.buf = torch.empty(up.payload_bytes + 4 * UP_TRAILER, dtype=torch.uint8)
        # the parameters each worker holds (row w - 1: worker w), for the downlink
        self.copies = flat_params(model).cpu().repeat(workers, 1) if self.down else None

    def split(self, messages: torch.Tensor):
        """(n, bytes) messages -> decoded (n, P) gradients and (n, 3) trailers."""
        body, trailer = messages[:, : self.up.payload_bytes], messages[:, self.up.payload_bytes :]
        return self.up.decode(body), as_floats(trailer).reshape(-1, UP_TRAILER)

    def receive_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every worker's message (in rank order), decoded in one batch."""
        messages = torch.empty(self.workers, len(self.buf), dtype=torch.uint8)
        for src in range(1, self.workers + 1):
            self.ctx.comm.recv(messages[src - 1], src)
        return self.split(messages)

    def receive_one(self) -> tuple[int, torch.Tensor, torch.Tensor]:
        """The next message from any worker: its rank, gradient and trailer."""
        src = self.ctx.comm.recv(self.buf)
        grads, trailer = self.split(self.buf.reshape(1, -1))
        return src, grads[0], trailer[0]

    def reply(self, version: int, dsts: list[int]) -> None:
        """The model (or each worker's compressed difference to it) and its version."""
        tail = as_bytes(torch.tensor([float(version)]))
        own = flat_params(self.model).cpu()
        if self.down is None:
            message = torch.cat([as_bytes(own), tail])
            for dst in dsts:
                self.ctx.comm.send(message, dst)
            return
        rows = torch.tensor(dsts) - 1
        payload = self.down.encode(own - self.copies[rows], np.asarray(dsts))
        self.copies[rows] = self.copies[rows] + self.down.decode(payload)
        for dst, row in zip(dsts, payload, strict=True):
            self.ctx.comm.send(torch.cat([row, tail]), dst)

    def state_dict(self) -> dict:
        return {
            "up": self.up.state_dict(),
            "down": self.down.state_dict() if self.down else None,
            "copies": self.copies,
        }

    def load_state_dict(self, state: dict) -> None:
        self.up.load_state_dict(state["up"])
        if self.down is not None:
            self.down.load_state_dict(state["down"])
        self.copies = state["copies"]


def sync_update(link: ServerLink, apply) -> tuple[float, int]:
    """One synchronous step: the sample-weighted mean of the decoded gradients, through the
    chain's aggregate, applied with `apply(grad)`. Returns the mean loss and the samples."""
    grads, trailer = link.receive_all()
    weights = trailer[:, 1]
    mean = (grads * weights[:, None]).sum(0) / weights.sum()
    apply(link.up.aggregate(mean))
    return float(trailer[:, 0].sum() / weights.sum()), int(weights.sum())


def analytic(cfg, lead: list[dict]) -> dict:
    """Per worker per step, the formula of what travels: the chain's formula plus the
    12-byte trailer up, and the model (4 P) or, with downlink, the chain's formula down,
    plus the 4-byte version. {} for a run without compression."""
    event = next((e for e in lead if e.get("phase") == "compress"), None)
    if event is None:
        return {}
    params = next(e["params"] for e in lead if e.get("phase") == "start")
    up = event["formula_bytes"] + 4 * UP_TRAILER
    down = (event["formula_bytes"] if cfg.compress.downlink else 4 * params) + 4
    return {
        "uplink_bytes_per_step_analytic": round(up, 1),
        "downlink_bytes_per_step_analytic": round(down, 1),
        "bytes_per_step_analytic": round(up + down, 1),
        "server_bytes_per_step_analytic": round((up + down) * cfg.workers, 1),
    }
