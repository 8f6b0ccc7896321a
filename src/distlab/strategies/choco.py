"""Compressed gossip: CHOCO-gossip (Koloskova, Stich and Jaggi 2019, "Decentralized
Stochastic Optimization and Gossip Algorithms with Compressed Communication").

A worker cannot compress its model and have its neighbours average what arrives: what
compression drops would be lost for good. CHOCO-gossip keeps public copies instead: every
worker holds x_hat_j for itself and each neighbour, sends q_i = C(x_i - x_hat_i) (the run's
chain, through the counted `Communicator.exchange`), and every holder of a copy adds the
decoded q to it, so all copies of x_hat_i agree bit for bit. The consensus step then moves
toward the neighbours' copies, x_i += gamma * sum_j W_ij (x_hat_j - x_hat_i). The difference
x_i - x_hat_i still holds what earlier messages dropped: it is the error feedback of this
scheme, and the chain keeps none of its own (compress.error_feedback is refused).

Every copy starts at the common initial model (every rank builds the same seeded weights),
which is the paper's x_hat = 0 after one exact first message. The copies are of a fixed
graph's neighbours: a graph that changes per round (random-k) would leave copies stale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from distlab import topology
from distlab.training import flat_params, set_flat_params

if TYPE_CHECKING:
    from distlab.config import RunConfig
    from distlab.runtime.context import WorkerContext
    from distlab.transforms.chain import Chain

# CHOCO's consensus step size when strategy.gamma is left out: the paper tunes it per
# compressor; 1 (a full D-PSGD step toward the copies) diverges under top-k at 1%, 0.1 keeps
# dense gossip's accuracy there. Coarser compressors (QSGD with few levels) need less.
DEFAULT_GAMMA = 0.1
# Compressors whose message cannot be a difference of parameters, and why.
REFUSED = {"majority": "signs without a scale cannot carry a difference of models"}


def check(cfg: RunConfig) -> None:
    """What compressed gossip cannot carry, before any process starts; gamma needs it."""
    p, names = cfg.strategy, cfg.compress.names
    if not names:
        if p.gamma is not None:
            raise ValueError("strategy.gamma applies with compression only (compress.kind is none)")
        return
    why = REFUSED.get(names[0])
    if why is None and cfg.compress.error_feedback:
        why = "CHOCO-gossip's difference to the public copy is its error feedback already"
        why += "; set compress.error_feedback=false"
    elif why is None and p.topology == "random-k":
        why = "CHOCO-gossip keeps public copies of fixed neighbours; random-k changes them"
    elif why is None and p.mixing == "curvature":
        why = "curvature mixing projects whole models, not the public copies CHOCO moves to"
    elif why is None and p.personal_head:
        why = "the chain compresses the whole model; drop personal_head"
    if why is not None:
        raise ValueError(f"compress.kind={'+'.join(names)} on gossip: {why}")


class Choco:
    """One worker's public copies (its own and its neighbours') and its CHOCO round."""

    def __init__(self, ctx: WorkerContext, model, chain: Chain, gamma: float, peers) -> None:
        self.ctx, self.model, self.chain, self.gamma = ctx, model, chain, gamma
        start = flat_params(model).cpu()  # the chain and the copies live on the CPU
        self.hats = {r: start.clone() for r in [ctx.rank, *peers]}

    def mix(self, weights: np.ndarray, peers: list[int]) -> None:
        """One round with W's row `weights`: send q, update every copy, step toward them."""
        rank, comm = self.ctx.rank, self.ctx.comm
        own = flat_params(self.model).cpu()
        payload = self.chain.encode((own - self.hats[rank]).reshape(1, -1), np.array([rank]))
        received = comm.exchange(payload[0], peers)
        decoded = self.chain.decode(torch.stack([payload[0], *received]))
        for who, q in zip([rank, *peers], decoded, strict=True):
            self.hats[who] += q
        move = torch.zeros_like(own)
        for peer in peers:
            move += float(weights[peer]) * (self.hats[peer] - self.hats[rank])
        set_flat_params(self.model, (own + self.gamma * move).to(self.ctx.device))

    def state_dict(self) -> dict:
        ranks = sorted(self.hats)
        return {"ranks": ranks, "hats": torch.stack([self.hats[r] for r in ranks])}

    def load_state_dict(self, state: dict) -> None:
        self.hats = dict(zip(state["ranks"], state["hats"].clone(), strict=True))


def make(ctx: WorkerContext, model, graph: np.ndarray) -> Choco | None:
    """This worker's CHOCO state on the fixed `graph`, or None without compression (plain
    D-PSGD mixing)."""
    chain = ctx.compressor(model)
    if chain is None:
        return None
    gamma = ctx.cfg.strategy.gamma
    peers = topology.neighbours(graph, ctx.rank)
    return Choco(ctx, model, chain, DEFAULT_GAMMA if gamma is None else gamma, peers)
