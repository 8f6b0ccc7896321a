"""The arithmetic of client-level differential privacy on (n, P) update rows: clipping each
client's delta to a norm, the Gaussian noise of the sum, and the adaptive clipping norm.

DP-FedAvg (McMahan, Ramage, Talwar and Zhang 2018, "Learning Differentially Private
Recurrent Language Models"): each client's delta is clipped to norm C, the server adds
N(0, (z C)^2 I) to their sum and divides by the expected number of clients qK (the fixed
denominator), so one client moves the aggregate by at most C / (qK).

Adaptive clipping (Andrew, Thakkar, McMahan and Ramaswamy 2021, "Differentially Private
Learning with Adaptive Clipping"): C follows the gamma quantile of the update norms,
C <- C exp(-eta (b - gamma)), where b is the noised fraction of clients left unclipped.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def clip_rows(rows: torch.Tensor, start: torch.Tensor, clip: float):
    """(rows with each delta `row - start` clipped to norm `clip`, mask of the rows left as
    they were). A row within the norm is not touched (its bits stay); a non-finite row
    stays as it is and counts as clipped."""
    norms = torch.linalg.vector_norm(rows - start, dim=1)
    over = norms > clip
    out = rows
    if over.any():
        out = rows.clone()
        scale = (clip / norms[over]).unsqueeze(1)
        out[over] = start + (rows[over] - start) * scale
    return out, norms <= clip


def noise_generator(seed: int, stream: int, round_: int, attempt: int) -> np.random.Generator:
    """The noise of one attempt at a round: keyed, so a resumed run draws the same."""
    return np.random.default_rng([seed, stream, round_, attempt])


def gaussian(size: int, std: float, gen: np.random.Generator) -> torch.Tensor:
    """N(0, std^2 I) of `size` float32 values."""
    return torch.from_numpy(gen.standard_normal(size, dtype=np.float32)) * std


def private_mean(
    mean: torch.Tensor, start: torch.Tensor, count: int, expected: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """start + (sum of the `count` clipped deltas + noise) / expected, from their uniform
    mean. The mean itself when count == expected and there is no noise (bit for bit the
    mean FedAvg takes of equal-size clients)."""
    if count == expected and noise is None:
        return mean
    out = start + (mean - start) * (count / expected)
    if noise is not None:
        out = out + noise / expected
    return out


def update_noise(noise: float, count_noise: float) -> float:
    """The update's noise multiplier z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2) that, with the
    count's noise sigma_b, spends what z alone would (Andrew et al. 2021, Theorem 1); a
    ValueError when sigma_b is too small for z (2 sigma_b <= z)."""
    if noise == 0:
        return 0.0
    if 2 * count_noise <= noise:
        raise ValueError(
            f"privacy.count_noise ({count_noise:g}) is too small for privacy.noise ({noise:g}) "
            "under adaptive clipping: it needs 2 * count_noise > noise; raise "
            "privacy.count_noise or lower privacy.noise"
        )
    return (noise**-2 - (2 * count_noise) ** -2) ** -0.5


def next_clip(
    clip: float,
    unclipped: int,
    expected: float,
    count_noise: float,
    step: float,
    quantile: float,
    gen: np.random.Generator,
) -> float:
    """The geometric update of the clipping norm toward the `quantile` of the update norms:
    b = (unclipped + N(0, count_noise^2)) / expected, C exp(-step (b - quantile))."""
    noisy = unclipped + (gen.normal(0.0, count_noise) if count_noise > 0 else 0.0)
    return clip * math.exp(-step * (noisy / expected - quantile))
