"""The federated round loop, kept apart from where clients execute.

The server decides: which clients take part (seeded sampling), which of them fail (seeded
failure injection), which returned updates are usable, how they are aggregated and how the
server optimizer applies the result. An executor only trains the clients it is handed and
returns their parameters; the same loop drives the process and the vectorized executors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from distlab.strategies import aggregate as agg

if TYPE_CHECKING:
    from distlab.strategies.fedavg import Params

# Stream tags for the server's generators (the clients' streams are in clients.py).
SAMPLE_STREAM = 11
FAILURE_STREAM = 12


class RoundFailed(ValueError):
    """Too few usable client updates in a round, after every retry: the configured failure
    rate and min_clients cannot be met (a ValueError, so the CLI prints one line)."""


@dataclass
class Updates:
    """What came back from the clients of one round, one row per client."""

    clients: np.ndarray
    params: torch.Tensor
    num_examples: np.ndarray
    losses: np.ndarray


class Executor(Protocol):
    def train(self, round_: int, start: torch.Tensor, clients: np.ndarray) -> Updates:
        """Train `clients` from the global parameters `start`; one row per client."""

    def close(self) -> None:
        """Release the clients (tell remote hosts to stop)."""


@dataclass
class RoundOutcome:
    sampled: np.ndarray
    failed: np.ndarray
    rejected: list[int]
    updates: Updates
    attempts: int
    retried_failed: list[int] = field(default_factory=list)


def sample_clients(seed: int, round_: int, attempt: int, clients: int, per_round: int):
    """per_round distinct client ids, sorted, from a generator keyed by (seed, round, attempt)."""
    rng = np.random.default_rng([seed, SAMPLE_STREAM, round_, attempt])
    if per_round >= clients:
        return np.arange(clients)
    return np.sort(rng.choice(clients, size=per_round, replace=False))


def draw_failures(seed: int, round_: int, attempt: int, sampled: np.ndarray, rate: float):
    """A boolean mask over `sampled`: True where the client drops out this round."""
    if rate <= 0:
        return np.zeros(len(sampled), dtype=bool)
    rng = np.random.default_rng([seed, FAILURE_STREAM, round_, attempt])
    return rng.random(len(sampled)) < rate


def screen_updates(updates: Updates, size: int) -> tuple[np.ndarray, list[int]]:
    """Keep updates of the right shape whose values are all finite; returns (keep mask, ids
    of the rejected clients)."""
    params = updates.params
    if params.ndim != 2 or params.shape[1] != size:
        return np.zeros(len(updates.clients), dtype=bool), [int(c) for c in updates.clients]
    keep = finite_rows(params).numpy() & np.isfinite(updates.losses)
    keep &= updates.num_examples > 0
    return keep, [int(c) for c in updates.clients[~keep]]


def finite_rows(params: torch.Tensor) -> torch.Tensor:
    """Per row, whether every value is finite. amax of |x| propagates NaN and keeps inf, and
    runs 10x faster than isfinite(x).all(dim=1)."""
    if params.shape[1] == 0:
        return torch.ones(len(params), dtype=torch.bool)
    return torch.isfinite(params.abs().amax(dim=1))


def select(updates: Updates, keep: np.ndarray) -> Updates:
    if keep.all():  # the usual round: no copy
        return updates
    rows = torch.from_numpy(np.flatnonzero(keep))
    return Updates(
        updates.clients[keep],
        updates.params[rows],
        updates.num_examples[keep],
        updates.losses[keep],
    )


def aggregate_updates(params: Params, updates: Updates) -> torch.Tensor:
    """The configured aggregator over the client models, weighted by sample counts."""
    if params.aggregator == "median":
        return agg.median(updates.params, updates.num_examples)
    if params.aggregator == "trimmed-mean":
        return agg.trimmed_mean(updates.params, updates.num_examples, params.trim_ratio)
    if params.aggregator == "krum":
        return agg.krum(updates.params, updates.num_examples, params.krum_f)
    return agg.weighted_mean(updates.params, updates.num_examples)


def needed_clients(params: Params) -> int:
    """Usable updates a round needs: min_clients, and more than 2f + 2 for Krum."""
    if params.aggregator == "krum":
        return max(params.min_clients, 2 * params.krum_f + 3)
    return params.min_clients


def run_round(
    params: Params, executor: Executor, seed: int, round_: int, start: torch.Tensor
) -> RoundOutcome:
    """Sample, inject failures, train, screen; retry with a fresh sample (at most
    params.max_retries times) while fewer than the needed updates are usable."""
    per_round = params.clients_per_round or params.clients
    earlier: list[int] = []
    for attempt in range(params.max_retries + 1):
        sampled = sample_clients(seed, round_, attempt, params.clients, per_round)
        failed = draw_failures(seed, round_, attempt, sampled, params.client_failure_rate)
        updates = executor.train(round_, start, sampled[~failed])
        keep, rejected = screen_updates(updates, start.numel())
        if keep.sum() >= needed_clients(params):
            kept = select(updates, keep)
            return RoundOutcome(sampled, sampled[failed], rejected, kept, attempt + 1, earlier)
        earlier += [int(c) for c in sampled[failed]] + rejected
    raise RoundFailed(
        f"round {round_}: fewer than {needed_clients(params)} usable client updates after "
        f"{params.max_retries + 1} attempts (client_failure_rate {params.client_failure_rate}); "
        "lower client_failure_rate or min_clients, or raise max_retries"
    )


class ServerOptimizer:
    """Applies the aggregate to the global model, as in Reddi et al. 2021, "Adaptive
    Federated Optimization": delta = aggregate - global is a pseudo-gradient step.
    fedavg/fedsgd/fedprox: w += server_lr * delta. FedAvgM (Hsu et al. 2019, "Measuring the
    Effects of Non-Identical Data Distribution"): v = beta * v + delta; w += server_lr * v.
    FedAdam: m, v moments of delta; w += server_lr * m / (sqrt(v) + tau)."""

    def __init__(self, params: Params) -> None:
        self.p = params
        self.state: dict[str, torch.Tensor] = {}

    def step(self, current: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        p = self.p
        if p.algorithm in ("fedavg", "fedsgd", "fedprox") and p.server_lr == 1:
            return aggregate.clone()
        delta = aggregate - current
        if p.algorithm == "fedavgm":
            v = self.state.get("v", torch.zeros_like(delta))
            delta = self.state["v"] = p.server_momentum * v + delta
        elif p.algorithm == "fedadam":
            m = self.state.get("m", torch.zeros_like(delta))
            v = self.state.get("v", torch.zeros_like(delta))
            self.state["m"] = p.beta1 * m + (1 - p.beta1) * delta
            self.state["v"] = p.beta2 * v + (1 - p.beta2) * delta * delta
            delta = self.state["m"] / (self.state["v"].sqrt() + p.tau)
        return current + p.server_lr * delta


def round_fields(outcome: RoundOutcome) -> dict:
    """The round event's client bookkeeping."""
    fields = {
        "clients": [int(c) for c in outcome.sampled],
        "failed": [int(c) for c in outcome.failed],
        "rejected": outcome.rejected,
        "attempts": outcome.attempts,
    }
    if outcome.retried_failed:
        fields["retried_failed"] = outcome.retried_failed
    return fields


def train_rounds(
    ctx, params: Params, executor: Executor, start: torch.Tensor, on_eval
) -> torch.Tensor:
    """The round loop: returns the final global parameters. `on_eval(round, global)` runs
    every cfg.eval_every rounds (0 = every round) and after the last one."""
    cfg, opt = ctx.cfg, ServerOptimizer(params)
    current = start.clone()
    every = cfg.eval_every or 1
    ctx.recorder.phase("train", total=params.rounds, unit="round")
    for round_ in range(1, params.rounds + 1):
        begin = time.perf_counter()
        outcome = run_round(params, executor, cfg.seed, round_, current)
        current = opt.step(current, aggregate_updates(params, outcome.updates))
        ups = outcome.updates
        ctx.recorder.round(
            round_,
            loss=float(np.mean(ups.losses)),
            samples=int(ups.num_examples.sum()) * params.local_epochs,
            duration=time.perf_counter() - begin,
            **round_fields(outcome),
        )
        if round_ % every == 0 or round_ == params.rounds:
            on_eval(round_, current)
    ctx.recorder.phase("train_end", rounds=params.rounds)
    return current
