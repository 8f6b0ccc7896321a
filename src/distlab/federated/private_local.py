"""Client-level DP-SGD inside fedavg's local training (Abadi et al. 2016, "Deep Learning with
Differential Privacy"): every local step clips each sample's gradient to norm C, sums them,
adds Gaussian noise of standard deviation z * C and divides by the batch's samples.

One rule serves every executor: `private_grads` takes the parameters of K clients as
(K, *shape) tensors and their (K, B, ...) batches and gives each client's noised mean
gradient, with per-sample gradients from torch.func (vmap over clients of vmap over samples
of grad): the vectorized executor calls it once for all the sampled clients of a chunk, the
sequential one (and every process host) with K = 1, so they agree up to float rounding. A
client's noise comes from its own generator keyed by (seed, round, client), drawn once a step.

Epsilon: a client's privacy loss is the accountant's over the local steps it took in every
round it was sampled in, at sampling rate local batch / local samples (shuffled batches
accounted as Poisson sampling at that rate, as Opacus does for its non-Poisson loaders).
The round event's `epsilon` is the largest over all clients so far.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from distlab.federated.seam import RoundTransform

if TYPE_CHECKING:
    from distlab.federated.executors import ClientSetup
    from distlab.federated.types import Updates

# The noise generators' stream tag, apart from the batch and hold-out streams of clients.py.
NOISE_STREAM = 7
# What a norm is floored at before dividing by it (Opacus's own guard).
EPS = 1e-6
EXECUTORS = ("vectorized", "sequential", "processes", "auto")


@dataclass(frozen=True)
class LocalPrivacy:
    """Per-sample clipping norm C and noise multiplier z of each local step."""

    clip: float
    noise: float


def local_privacy(cfg) -> LocalPrivacy | None:
    """The run's local DP-SGD, or None when privacy.mode is not dpsgd."""
    p = cfg.privacy
    if p.mode != "dpsgd":
        return None
    return LocalPrivacy(float(p.clip), float(p.noise))


def check_local_privacy(cfg) -> None:
    """fedavg's rules for privacy.mode=dpsgd, before any process starts."""
    if cfg.privacy.mode != "dpsgd":
        return
    if cfg.strategy.executor not in EXECUTORS:
        raise ValueError(
            f"privacy.mode=dpsgd is not carried by executor {cfg.strategy.executor} "
            f"(allowed: {', '.join(EXECUTORS)})"
        )
    if cfg.privacy.target_epsilon is not None:
        raise ValueError(
            "privacy.target_epsilon is not carried by fedavg's local DP-SGD (each client's "
            "steps depend on the rounds it is sampled in): set privacy.noise"
        )


def noise_generator(seed: int, round_: int, client: int) -> torch.Generator:
    """The generator of one client's noise in one round."""
    key = np.random.SeedSequence([seed, NOISE_STREAM, round_, client]).generate_state(2)
    return torch.Generator().manual_seed(int(key[0]) << 32 | int(key[1]))


def sample_grads(model, params: dict, x: torch.Tensor, y: torch.Tensor):
    """Per-sample gradients of K clients: params name -> (K, *shape), x (K, B, ...), y (K, B);
    returns (name -> (K, B, *shape), losses (K, B))."""

    def loss(p, xi, yi):
        logits = functional_call(model, p, (xi.unsqueeze(0),))
        # log_softmax + gather rather than cross_entropy: see VectorTrainer.step_grad
        value = -torch.log_softmax(logits, -1)[0].gather(0, yi.unsqueeze(0))[0]
        return value, value.detach()

    per_sample = vmap(grad(loss, has_aux=True), in_dims=(None, 0, 0), randomness="different")
    return vmap(per_sample, in_dims=(0, 0, 0), randomness="different")(params, x, y)


def clipped_sums(model, params: dict, x, y, real, clip: float):
    """Per-sample gradients clipped to norm `clip` and summed over each client's real
    samples (`real`: (K, B) 0/1, padding 0). Returns ([(K, size) per parameter], losses
    (K, B))."""
    grads, losses = sample_grads(model, params, x, y)
    k, b = real.shape
    squares = sum(g.reshape(k, b, -1).pow(2).sum(-1) for g in grads.values())
    factor = (clip / (squares.sqrt() + EPS)).clamp(max=1.0) * real
    sums = [torch.einsum("kb,kbp->kp", factor, g.reshape(k, b, -1)) for g in grads.values()]
    return sums, losses


def private_grads(model, params: dict, x, y, real, dp: LocalPrivacy, generators):
    """Each client's DP-SGD gradient: per-sample gradients clipped to dp.clip, summed over its
    real samples (`real`: (K, B) 0/1, padding 0), noise N(0, (z C)^2) added, divided by its
    real samples. Returns ([(K, *shape) per parameter], mean losses (K,))."""
    sums, losses = clipped_sums(model, params, x, y, real, dp.clip)
    count = real.sum(1).clamp(min=1).unsqueeze(1)
    noise = draw_noise(generators, sum(s.shape[1] for s in sums))
    out, offset = [], 0
    for summed, value in zip(sums, params.values(), strict=True):
        part = noise[:, offset : offset + summed.shape[1]] * (dp.noise * dp.clip)
        out.append(((summed + part) / count).view(value.shape))
        offset += summed.shape[1]
    return out, (losses * real).sum(1) / count[:, 0]


def draw_noise(generators: list[torch.Generator], size: int) -> torch.Tensor:
    """(K, size) standard normals, row k from client k's generator."""
    out = torch.empty(len(generators), size)
    for row, gen in zip(out, generators, strict=True):
        torch.randn(size, generator=gen, out=row)
    return out


def private_step(model, dp: LocalPrivacy, x, y, generator) -> float:
    """One client's DP-SGD gradient into its model's .grad (the sequential rule); returns
    the batch's mean loss."""
    named = dict(model.named_parameters())
    params = {n: p.detach().unsqueeze(0) for n, p in named.items()}
    real = torch.ones(1, len(y))
    grads, loss = private_grads(
        model, params, x.unsqueeze(0), y.unsqueeze(0), real, dp, [generator]
    )
    for p, g in zip(named.values(), grads, strict=True):
        p.grad = g[0].clone()
    return float(loss[0])


def client_epsilon(noise, rate, steps, delta, kind) -> float | None:
    from distlab.accountant import epsilon

    return epsilon(noise, rate, steps, delta, kind)


class LocalPrivacyLoss(RoundTransform):
    """Counts the rounds each client trained in and records the largest client epsilon."""

    name = "local-dpsgd"

    def __init__(self, setup: ClientSetup) -> None:
        cfg, spec = setup.ctx.cfg, setup.spec
        self.privacy, self.dp = cfg.privacy, spec.dp
        sizes = setup.data.sizes
        # each client's local steps a round, as clients.local_steps counts them
        per_epoch = np.ones_like(sizes) if spec.batch is None else -(-sizes // spec.batch)
        self.steps = np.where(sizes > 0, spec.epochs * per_epoch, 0)
        batch = sizes if spec.batch is None else np.minimum(spec.batch, np.maximum(sizes, 1))
        self.rates = np.minimum(batch / np.maximum(sizes, 1), 1.0)
        self.rounds = np.zeros(len(sizes), dtype=np.int64)
        self.cache: dict[tuple[float, int], float] = {}

    def updates(self, round_: int, start: torch.Tensor, updates: Updates) -> Updates:
        self.rounds[np.asarray(updates.clients)] += 1
        return updates

    def epsilon(self) -> float | None:
        seen = (self.rounds > 0) & (self.steps > 0)
        if not seen.any():
            return None
        totals = (self.rounds * self.steps)[seen].tolist()
        keys = set(zip(self.rates[seen].tolist(), totals, strict=True))
        for key in keys - self.cache.keys():
            p = self.privacy
            self.cache[key] = client_epsilon(self.dp.noise, key[0], key[1], p.delta, p.accountant)
        values = [self.cache[key] for key in keys]
        return None if None in values else max(values)

    def fields(self, round_: int) -> dict:
        return {"epsilon": self.epsilon(), "clip": self.dp.clip}

    def state_dict(self) -> dict:
        return {"rounds": self.rounds.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.rounds = np.array(state["rounds"], dtype=np.int64)


def make_local_privacy(setup: ClientSetup) -> LocalPrivacyLoss | None:
    """The seam's account of local DP-SGD, or None when privacy.mode is not dpsgd."""
    if getattr(setup.spec, "dp", None) is None:
        return None
    return LocalPrivacyLoss(setup)
