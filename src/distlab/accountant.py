"""The one door to Opacus's privacy accountants, for every differentially private feature.

A step is one use of the subsampled Gaussian mechanism: a batch (DP-SGD) or a round's
clients (DP-FedAvg) drawn by Poisson sampling at `sample_rate`, clipped and noised with
multiplier `noise`. `epsilon` composes `steps` such steps at `delta`; `noise_for` finds the
smallest multiplier that keeps a run of `steps` steps within a target epsilon.

rdp: Renyi DP (Mironov 2017, "Renyi Differential Privacy"; Mironov, Talwar and Zhang 2019
for the subsampled Gaussian). prv: privacy random variables (Gopi, Lee and Wutschitz 2021,
"Numerical Composition of Differential Privacy"). Opacus is imported on first use, so a run
without privacy never loads it.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from functools import lru_cache

ACCOUNTANTS = ("rdp", "prv")


def new_accountant(kind: str):
    """A fresh Opacus accountant of `kind` (rdp or prv)."""
    if kind not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {kind!r} (allowed: {', '.join(ACCOUNTANTS)})")
    from opacus.accountants import create_accountant

    return create_accountant(mechanism=kind)


def epsilon(noise: float, sample_rate: float, steps: int, delta: float, kind: str = "rdp"):
    """Epsilon at `delta` after `steps` subsampled Gaussian steps; None when it is unbounded
    (noise 0) and 0.0 before any step."""
    if steps <= 0:
        return 0.0
    if noise <= 0:
        return None
    accountant = new_accountant(kind)
    accountant.history = [(float(noise), float(sample_rate), int(steps))]
    with quiet():
        value = float(accountant.get_epsilon(delta=delta))
    return value if math.isfinite(value) else None


@lru_cache(maxsize=32)  # a run's check and its server ask the same; each search takes seconds
def noise_for(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, kind: str = "rdp"
) -> float:
    """The smallest noise multiplier (to Opacus's tolerance of 0.01 in epsilon) that keeps
    `steps` steps within `target_epsilon` at `delta`; a ValueError in one line when none does."""
    from opacus.accountants.utils import get_noise_multiplier

    new_accountant(kind)
    try:
        with quiet():
            return float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=kind,
                )
            )
    except ValueError as error:
        raise ValueError(
            f"privacy.target_epsilon={target_epsilon} is out of reach: no noise multiplier "
            f"up to 1e6 keeps {steps} steps at sampling rate {sample_rate:g} within it at "
            f"delta={delta:g} ({error}); raise target_epsilon or delta, or run fewer steps"
        ) from None


@contextmanager
def quiet():
    """Opacus warns when the best Renyi order is the largest it tries (a loose bound, not an
    error); the CLI's error and progress lines stay one line each."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield
