"""Model-poisoning attacks on (n, P) rows of updates: what an attacking client or worker
sends in place of its honest update.

Every attack takes all the rows of one exchange (a chunk of a round's clients, or every
worker's gradient of a step) and a mask of the attackers among them, and gives back the
rows the aggregator receives: honest rows unchanged, attackers' rows crafted. The attacks
that need the honest updates (ALIE, IPM) are omniscient, as in their papers: the attackers
know the honest rows of the same exchange.

Data poisoning (label-flip, backdoor) changes what an attacker trains on, not what it
sends: see distlab/data/poison.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch

# The attacks that craft rows here; the data attacks are applied to the training data.
MODEL_ATTACKS = ("sign-flip", "gaussian", "scaling", "alie", "ipm")


@dataclass(frozen=True)
class AttackSettings:
    """The attack's settings (config_threats.AttackConfig), without pydantic."""

    kind: str
    scale: float | None = None
    sigma: float = 1.0
    z: float | None = None
    epsilon: float = 0.1

    @classmethod
    def of(cls, cfg) -> AttackSettings:
        return cls(cfg.kind, cfg.scale, cfg.sigma, cfg.z, cfg.epsilon)


def draw_attackers(count: int, fraction: float, seed: int) -> np.ndarray:
    """round(fraction * count) distinct ids in [0, count), sorted, drawn once from `seed`:
    the clients (or ranks) that attack for the whole run."""
    k = int(round(fraction * count))
    rng = np.random.default_rng([seed, 0xA77AC])
    return np.sort(rng.choice(count, size=k, replace=False)).astype(np.int64)


def alie_z(n: int, attackers: int) -> float:
    """z_max of Baruch et al. 2019, "A Little Is Enough": with s = floor(n/2 + 1) - f
    honest supporters needed, the largest z whose shift still keeps the attackers closer
    to the mean than s honest updates, Phi^-1((n - s) / n)."""
    s = math.floor(n / 2 + 1) - attackers
    return NormalDist().inv_cdf(min(max((n - s) / n, 1e-6), 1 - 1e-6))


def craft(
    rows: torch.Tensor, attack: torch.Tensor, settings: AttackSettings, gen: torch.Generator
) -> torch.Tensor:
    """`rows` (n, P) of updates with the rows where `attack` (n,) is True replaced by the
    attack's; a new tensor (the input is left as it was)."""
    out = rows.clone()
    if not bool(attack.any()):
        return out
    bad, honest = rows[attack], rows[~attack] if bool((~attack).any()) else rows
    out[attack] = crafted(bad, honest, int(attack.sum()), len(rows), settings, gen)
    return out


def crafted(bad, honest, f: int, n: int, settings: AttackSettings, gen) -> torch.Tensor:
    """The attackers' rows: their own honest updates `bad`, the honest others `honest`."""
    kind = settings.kind
    if kind == "sign-flip":
        return -(settings.scale or 1.0) * bad
    if kind == "gaussian":
        noise = torch.randn(bad.shape, generator=gen, dtype=torch.float32)
        return settings.sigma * noise
    if kind == "scaling":
        return (settings.scale or n) * bad
    if kind == "alie":
        z = settings.z if settings.z is not None else alie_z(n, f)
        row = honest.mean(dim=0) - z * honest.std(dim=0, correction=0)
        return row.expand_as(bad).clone()
    if kind == "ipm":
        return (-settings.epsilon * honest.mean(dim=0)).expand_as(bad).clone()
    raise ValueError(f"unknown model attack {kind!r} (allowed: {', '.join(MODEL_ATTACKS)})")
