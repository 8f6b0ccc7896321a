"""Server optimizers: pure steps from (global, aggregate, state) to (new global, new state).

Reddi et al. 2021, "Adaptive Federated Optimization": delta = aggregate - global is a
pseudo-gradient, and the server applies it with an optimizer of its own (Algorithm 2):

- sgd (FedAvg, FedSGD, FedProx): w + lr * delta; lr 1 takes the aggregate as it is.
- momentum (FedAvgM, Hsu et al. 2019, "Measuring the Effects of Non-Identical Data
  Distribution for Federated Visual Classification"): v = beta * v + delta; w + lr * v.
- adam, adagrad, yogi (FedAdam, FedAdagrad, FedYogi): m = beta1 * m + (1 - beta1) * delta,
  a second moment v of delta as each optimizer keeps it, w + lr * m / (sqrt(v) + tau).
  v starts at 0 (the paper allows any v_-1 >= tau^2; Flower starts at 0 too).

A step never changes the state it is given; `ServerOptimizer` keeps it between rounds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

State = dict[str, torch.Tensor]
ServerStep = Callable[[torch.Tensor, torch.Tensor, State], tuple[torch.Tensor, State]]


@dataclass(frozen=True)
class ServerOptions:
    """The server optimizer's hyperparameters (those a step does not use are ignored)."""

    lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3


def sgd_step(current: torch.Tensor, aggregate: torch.Tensor, state: State, options):
    """w + lr * (aggregate - w): FedAvg's server (McMahan et al. 2017) with a learning rate.

    >>> sgd_step(torch.tensor([0.0]), torch.tensor([2.0]), {}, ServerOptions(lr=0.5))[0]
    tensor([1.])
    """
    if options.lr == 1:  # the plain average, bit for bit
        return aggregate.clone(), state
    return current + options.lr * (aggregate - current), state


def momentum_step(current: torch.Tensor, aggregate: torch.Tensor, state: State, options):
    """FedAvgM: v = momentum * v + delta (v starts at 0); w + lr * v."""
    delta = aggregate - current
    v = options.momentum * state.get("v", torch.zeros_like(delta)) + delta
    return current + options.lr * v, {"v": v}


def adam_moment(v: torch.Tensor, square: torch.Tensor, options) -> torch.Tensor:
    return options.beta2 * v + (1 - options.beta2) * square


def adagrad_moment(v: torch.Tensor, square: torch.Tensor, options) -> torch.Tensor:
    return v + square


def yogi_moment(v: torch.Tensor, square: torch.Tensor, options) -> torch.Tensor:
    return v - (1 - options.beta2) * square * torch.sign(v - square)


def adaptive_step(current: torch.Tensor, aggregate: torch.Tensor, state: State, options, *, moment):
    """Reddi et al.'s adaptive server step; `moment` updates the second moment."""
    delta = aggregate - current
    m = options.beta1 * state.get("m", torch.zeros_like(delta)) + (1 - options.beta1) * delta
    v = moment(state.get("v", torch.zeros_like(delta)), delta * delta, options)
    return current + options.lr * (m / (v.sqrt() + options.tau)), {"m": m, "v": v}


SERVER_OPTIMIZERS: dict[str, Callable] = {
    "sgd": sgd_step,
    "momentum": momentum_step,
    "adam": partial(adaptive_step, moment=adam_moment),
    "adagrad": partial(adaptive_step, moment=adagrad_moment),
    "yogi": partial(adaptive_step, moment=yogi_moment),
}


def server_step(name: str, options: ServerOptions) -> ServerStep:
    """The step of server optimizer `name` with its options bound."""
    if name not in SERVER_OPTIMIZERS:
        raise ValueError(
            f"unknown server optimizer {name!r} (allowed: {', '.join(SERVER_OPTIMIZERS)})"
        )
    return partial(SERVER_OPTIMIZERS[name], options=options)


class ServerOptimizer:
    """A pure server step and the state it carries from round to round."""

    def __init__(self, step: ServerStep) -> None:
        self.apply, self.state = step, {}

    def step(self, current: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        new, self.state = self.apply(current, aggregate, self.state)
        return new
