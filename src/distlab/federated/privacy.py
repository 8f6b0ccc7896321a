"""Central differential privacy of a federated run, at the update seam (seam.py): DP-FedAvg
(McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models") with
optional adaptive clipping (Andrew et al. 2021), accounted by Opacus (accountant.py).

Clients are drawn by Poisson sampling (server.py, RoundPlan.poisson): each client takes
part in a round independently with probability q = clients_per_round / clients, so a round
has any number of clients. The server clips each client's delta to norm C as it receives it
(`updates`), and the round's aggregation becomes start + (sum of clipped deltas +
N(0, (z C)^2 I)) / (qK), uniform over clients whatever their sample counts. Every attempt at
a round is one step of the subsampled Gaussian mechanism with rate q and multiplier z for
the accountant (a retried attempt releases nothing, so this overcounts, never under), and
each round event carries epsilon at privacy.delta after it and the clip norm it used.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from distlab.accountant import epsilon, noise_for
from distlab.federated.seam import RoundTransform
from distlab.transforms.privacy import (
    clip_rows,
    gaussian,
    next_clip,
    noise_generator,
    private_mean,
    update_noise,
)

if TYPE_CHECKING:
    from distlab.config import RunConfig
    from distlab.federated.executors import ClientSetup
    from distlab.federated.types import Aggregation, Updates

# Stream tags of the privacy generators (the server's sampling streams are 11 and 12).
NOISE_STREAM = 21
COUNT_STREAM = 22


@dataclass(frozen=True)
class Settings:
    """A run's DP-FedAvg, resolved from its config: the noise multiplier z (from the target
    epsilon when there is one), the update's z_delta, the sampling rate q and the expected
    clients per round qK."""

    noise: float
    update_noise: float
    clip: float | None
    sample_rate: float
    expected: float
    delta: float
    accountant: str
    adaptive: bool
    quantile: float
    clip_step: float
    count_noise: float


def settings_of(cfg: RunConfig) -> Settings:
    """The resolved settings; a one-line ValueError for what no run could do."""
    p, s = cfg.privacy, cfg.strategy
    if s.aggregator != "mean":
        raise ValueError(
            f"privacy.mode=central needs strategy.aggregator=mean (got {s.aggregator!r}): "
            "DP-FedAvg's noise is calibrated to a clipped sum, not a robust rule"
        )
    if p.adaptive and p.clip is None:
        raise ValueError("privacy.adaptive needs a starting privacy.clip > 0 (got None)")
    per_round = s.clients_per_round or s.clients
    rate = per_round / s.clients
    noise = p.noise
    if p.target_epsilon is not None:
        noise = noise_for(p.target_epsilon, p.delta, rate, s.rounds, p.accountant)
    count_noise = per_round / 20 if p.count_noise is None else p.count_noise
    z_delta = update_noise(noise, count_noise) if p.adaptive else noise
    return Settings(
        noise, z_delta, p.clip, rate, float(per_round), p.delta, p.accountant,
        p.adaptive, p.quantile, p.clip_step, count_noise,
    )  # fmt: skip


def check_central(cfg: RunConfig) -> None:
    """fedavg's check of central DP, before any process starts."""
    if cfg.privacy.mode == "central":
        settings_of(cfg)


def make_central_privacy(setup: ClientSetup):
    """The run's DP-FedAvg transform, or None when privacy.mode is not central; records the
    resolved settings as the lead's `privacy` phase event."""
    cfg = setup.ctx.cfg
    if cfg.privacy.mode != "central":
        return None
    settings = settings_of(cfg)
    setup.ctx.recorder.phase(
        "privacy",
        mode="central",
        noise=settings.noise,
        clip=settings.clip,
        delta=settings.delta,
        sample_rate=settings.sample_rate,
        accountant=settings.accountant,
        sampling="poisson",
        adaptive=settings.adaptive,
    )
    return CentralPrivacy(settings, cfg.seed)


class CentralPrivacy(RoundTransform):
    """Clip what the server receives, noise what it aggregates, count what it spent."""

    name = "privacy"

    def __init__(self, settings: Settings, seed: int) -> None:
        self.settings, self.seed = settings, seed
        self.clip = settings.clip
        self.steps = 0
        self.round, self.attempt = 0, 0
        self.begun = False  # an attempt started whose round has not trained yet
        self.start: torch.Tensor | None = None
        self.unclipped = 0  # usable clients of the current attempt within the clip norm
        self.used_clip: float | None = self.clip

    def updates(self, round_: int, start: torch.Tensor, updates: Updates) -> Updates:
        if self.begun:  # the attempt's first chunk: its round and start are known only now
            self.attempt = self.attempt + 1 if round_ == self.round else 0
            self.round, self.start, self.begun = round_, start, False
        if self.clip is None:
            return updates
        rows, within = clip_rows(updates.params, start, self.clip)
        usable = within.numpy() & (updates.num_examples > 0)
        self.unclipped += int(usable.sum())
        return replace(updates, params=rows)

    def aggregation(self, inner: Aggregation) -> Aggregation:
        """Each call starts an attempt at a round, before its clients train (its round and
        start arrive with the first `updates`): one step for the accountant."""
        self.steps += 1
        self.begun = True
        self.unclipped = 0
        return PrivateAggregation(self, inner)

    def finish(self, mean: torch.Tensor, count: int) -> torch.Tensor:
        """The private aggregate of an attempt whose `count` clients' uniform mean is `mean`;
        then the clip norm of the next round (adaptive)."""
        s = self.settings
        noise = None
        if s.update_noise > 0 and self.clip is not None:
            gen = noise_generator(self.seed, NOISE_STREAM, self.round, self.attempt)
            noise = gaussian(mean.numel(), s.update_noise * self.clip, gen)
        out = private_mean(mean, self.start, count, s.expected, noise)
        self.used_clip = self.clip
        if s.adaptive:
            gen = noise_generator(self.seed, COUNT_STREAM, self.round, self.attempt)
            self.clip = next_clip(
                self.clip, self.unclipped, s.expected, s.count_noise, s.clip_step, s.quantile, gen
            )
        return out

    def fields(self, round_: int) -> dict:
        s = self.settings
        spent = epsilon(s.noise, s.sample_rate, self.steps, s.delta, s.accountant)
        return {"epsilon": spent, "clip": self.used_clip}

    def state_dict(self) -> dict:
        return {"clip": self.clip, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.clip, self.steps = state["clip"], int(state["steps"])
        self.used_clip = self.clip


class PrivateAggregation:
    """The round's rule fed uniform weights (every client counts once, whatever its sample
    count), its mean turned into the noised, fixed-denominator aggregate at the end."""

    def __init__(self, privacy: CentralPrivacy, inner: Aggregation) -> None:
        self.privacy, self.inner = privacy, inner
        self.count = 0

    def add(self, updates: torch.Tensor, num_examples: np.ndarray) -> None:
        self.inner.add(updates, np.ones(len(updates)))
        self.count += len(updates)

    def result(self) -> torch.Tensor:
        return self.privacy.finish(self.inner.result(), self.count)
