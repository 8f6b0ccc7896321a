"""Gossip mixing: the graph of each round, its weights W, and one worker's mix.

Every gossip round, worker i swaps its model with its graph neighbours (point to point,
through the counted `Communicator.exchange`) and keeps x_i <- sum_j W[i, j] x_j (Lian et al.
2017, D-PSGD). The graph and W come from distlab.topology and are functions of the seed and
the round alone, so every rank and the summary know them without a message; only random-k
changes from round to round.

Curvature mixing (`mixing: curvature`): uniform weights, but worker i's move toward
sum_j W_ij x_j is projected off the top-k Hessian eigenvectors of its own loss on its most
recent batches (distlab.curvature: Lanczos on Hessian-vector products, `project_mix`),
re-estimated every `curvature_every` rounds from a generator seeded by (seed, rank, round).
k = 0 is uniform mixing.
"""

from __future__ import annotations

from collections import deque
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from distlab import curvature, topology
from distlab.strategies import choco
from distlab.training import flat_params, set_flat_params

if TYPE_CHECKING:
    from distlab.config import RunConfig
    from distlab.runtime.context import WorkerContext

# Stream tag of the curvature estimates' generators under the run seed.
CURVATURE_STREAM = 11

# Curvature mixing's own keys in the gossip params.
CURVATURE_KEYS = ("k", "curvature_every", "curvature_iterations", "curvature_batches")


def round_graph(cfg: RunConfig, round_: int) -> np.ndarray:
    """The adjacency of gossip round `round_` (1-based); only random-k changes with it."""
    p = cfg.strategy
    return graph_of(p.topology, cfg.workers, p.degree, cfg.seed, round_, p.graph_file)


@cache
def graph_of(name: str, n: int, degree: int, seed: int, round_: int, path: str | None):
    # A fixed topology is built once: its round number does not matter.
    fixed = round_ if name == "random-k" else 0
    return topology.build_graph(
        name, n, degree=degree, seed=seed, round_=fixed, graph_file=path
    ).copy()


def round_mixing(cfg: RunConfig, round_: int) -> np.ndarray:
    """W of round `round_`; curvature mixing projects the uniform weights' move."""
    rule = "uniform" if cfg.strategy.mixing == "curvature" else cfg.strategy.mixing
    return topology.mixing_matrix(round_graph(cfg, round_), rule)


def degrees(cfg: RunConfig, rounds: int) -> np.ndarray:
    """Per round (rows) and worker (columns), the number of neighbours it swaps with."""
    return np.array([round_graph(cfg, r).sum(axis=1) for r in range(1, rounds + 1)])


def graph_summary(cfg: RunConfig, deg: np.ndarray) -> dict:
    """The graph of a run of len(deg) rounds: the mean spectral gap of W, the mean degree."""
    gaps = [topology.spectral_gap(round_mixing(cfg, r)) for r in range(1, len(deg) + 1)]
    return {
        "topology": cfg.strategy.topology,
        "mixing": cfg.strategy.mixing,
        "spectral_gap": round(float(np.mean(gaps)), 6),
        "mean_degree": round(float(deg.mean()), 3),
    }


def check_curvature(p) -> None:
    """Curvature mixing's keys apply to it alone, and it needs k Lanczos iterations."""
    defaults = type(p).model_fields
    # Compared with the defaults: a config read back from config.json sets every key.
    stray = [key for key in CURVATURE_KEYS if getattr(p, key) != defaults[key].default]
    if p.mixing != "curvature" and stray:
        raise ValueError(
            f"strategy.{stray[0]} applies to mixing curvature only (mixing is {p.mixing!r})"
        )
    if p.mixing == "curvature" and p.curvature_iterations < p.k:
        raise ValueError(
            f"strategy.curvature_iterations ({p.curvature_iterations}) must be >= k ({p.k})"
        )
    if p.mixing == "curvature" and p.personal_head:
        raise ValueError("mixing curvature projects the whole model; drop personal_head")


def model_fits_data(cfg: RunConfig, data) -> None:
    """The model fits the data, and curvature mixing's k is at most its parameter count:
    both known only once the model is built, still before any process starts."""
    from distlab.models import build_model

    model = build_model(cfg.model, data.input_shape, data.classes, cfg.seed)
    if cfg.strategy.mixing == "curvature":
        curvature.check_k(cfg.strategy.k, sum(p.numel() for p in model.parameters()))


class Mixer:
    """One worker's side of the gossip rounds: the first `size` flat parameters of `model`
    are mixed (the rest, a personal head, stay home); with curvature mixing it keeps the
    most recent batches and the top-k eigenvectors of its loss on them."""

    def __init__(self, ctx: WorkerContext, model: nn.Module, size: int):
        self.ctx, self.model, self.size = ctx, model, size
        self.recent: deque = deque(maxlen=ctx.cfg.strategy.curvature_batches)
        self.directions: torch.Tensor | None = None  # curvature mixing: top-k eigenvectors
        self.choco = choco.make(ctx, model, round_graph(ctx.cfg, 1))  # None: uncompressed

    def remember(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.recent.append((x, y))

    def mix(self, round_: int) -> int:
        """Gossip round `round_`: swap models with the neighbours, keep the W-weighted mix.
        Returns the bytes this rank moved."""
        cfg, comm, rank = self.ctx.cfg, self.ctx.comm, self.ctx.rank
        w = round_mixing(cfg, round_)
        peers = topology.neighbours(round_graph(cfg, round_), rank)
        before = comm.bytes_sent + comm.bytes_recv
        if self.choco is not None:
            self.choco.mix(w[rank], peers)
            return comm.bytes_sent + comm.bytes_recv - before
        own = flat_params(self.model)
        shared = own[: self.size]
        received = zip(peers, comm.exchange(shared, peers), strict=True)
        if cfg.strategy.mixing == "curvature":
            mixed = self.curved_mix(shared, w[rank], received, round_)
        else:
            mixed = shared * float(w[rank, rank])
            for peer, theirs in received:
                mixed += theirs * float(w[rank, peer])
        set_flat_params(self.model, torch.cat([mixed, own[self.size :]]))
        return comm.bytes_sent + comm.bytes_recv - before

    def curved_mix(self, own: torch.Tensor, weights: np.ndarray, received, round_: int):
        """The uniform mix's move, own -> sum_j W_ij x_j, kept only outside the top-k
        eigenvectors of this worker's loss (re-estimated every `curvature_every` rounds)."""
        step = 1.0 - float(weights[self.ctx.rank])
        if step == 0:
            return own.clone()  # no neighbours this round
        if (round_ - 1) % self.ctx.cfg.strategy.curvature_every == 0:
            self.directions = self.estimate_directions(round_)
        mean = torch.zeros_like(own)
        for peer, theirs in received:
            mean += theirs * (float(weights[peer]) / step)
        return curvature.project_mix(own, mean, self.directions, step)

    def estimate_directions(self, round_: int) -> torch.Tensor:
        """Top-k Hessian eigenvectors (k x P) of the loss on the most recent batches, from a
        generator seeded by (seed, rank, round)."""
        p, cfg = self.ctx.cfg.strategy, self.ctx.cfg
        state = np.random.SeedSequence([cfg.seed, CURVATURE_STREAM, self.ctx.rank, round_])
        generator = torch.Generator().manual_seed(int(state.generate_state(1)[0]))
        loss_fn = curvature.loss_on_batches(self.model, list(self.recent))
        params = list(self.model.parameters())
        _, vectors = curvature.top_eigenpairs(
            loss_fn, params, p.k, p.curvature_iterations, generator
        )
        return vectors

    def state_dict(self) -> dict:
        state = {"recent": [list(batch) for batch in self.recent], "directions": self.directions}
        if self.choco is not None:
            state["choco"] = self.choco.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.recent.extend(tuple(batch) for batch in state["recent"])
        self.directions = state["directions"]
        if self.choco is not None:
            self.choco.load_state_dict(state["choco"])
