"""The update seam of the federated round loop: what happens to the clients' updates between
their local training and the server's step, declared once for every executor.

A `RoundTransform` has one hook after local training (`updates`: the rows of a chunk of
clients, as the server receives them) and one around the round's aggregation
(`aggregation`: it may wrap or replace the rule), after pfl-research's Postprocessor. The
run's transforms come from the factories of `FACTORIES`, in order: an attack acts on what
an attacking client sends, central differential privacy clips what the server receives and
noises what it aggregates, secure aggregation masks what travels and unmasks only the sum.
Each factory gives None when its feature is off, and with every feature off the executor
and the aggregation are the ones the run had before (bit for bit).

The rows an executor hands back are client models; a transform that works on updates takes
`row - start` (the model delta) and gives back `start + delta`. Every random choice comes
from a generator keyed by (seed, stream, round), so a resumed run draws what it would have.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from distlab.federated.executors import ClientSetup
    from distlab.federated.types import Aggregation, Executor, Updates

# The transforms' factories, "module:function", in the order they act on an update; each
# is imported only when the run is built, so a run without them loads none of their
# dependencies (cryptography, opacus).
FACTORIES = (
    "distlab.federated.attacks:make_attack",
    "distlab.federated.privacy:make_central_privacy",
    "distlab.federated.private_local:make_local_privacy",
    "distlab.federated.secagg:make_secagg",
)


class RoundTransform:
    """One feature at the seam; every hook defaults to leaving things as they are."""

    name = "transform"

    def updates(self, round_: int, start: torch.Tensor, updates: Updates) -> Updates:
        """A chunk's rows as the server receives them (client order, one row per client)."""
        return updates

    def aggregation(self, inner: Aggregation) -> Aggregation:
        """The aggregation of an attempt at a round: `inner` (the run's rule), wrapped or
        replaced. It is made when the attempt begins, before any of its clients trains, so
        the attempt's round and start reach a transform through `updates`."""
        return inner

    def fields(self, round_: int) -> dict:
        """What the round event records of this transform after the server's step."""
        return {}

    def state_dict(self) -> dict | None:
        """What a checkpoint keeps across rounds (None = nothing)."""
        return None

    def load_state_dict(self, state: dict) -> None:
        pass


class TransformedExecutor:
    """An executor with the run's transforms applied to every chunk it trains. Attributes
    it does not have (a compressed executor's `up`, a process executor's `checkpoint`) are
    the inner executor's."""

    def __init__(self, inner: Executor, transforms: list[RoundTransform]) -> None:
        self.inner, self.transforms = inner, transforms
        self.base: torch.Tensor | None = None
        self.round = 0

    def train(self, round_: int, start: torch.Tensor, clients: np.ndarray, **budget) -> Updates:
        self.base, self.round = start, round_
        updates = self.inner.train(round_, start, clients, **budget)
        for transform in self.transforms:
            updates = transform.updates(round_, start, updates)
        return updates

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def close(self) -> None:
        self.inner.close()

    def state_dict(self) -> dict | None:
        inner = self.inner.state_dict() if hasattr(self.inner, "state_dict") else None
        kept = {t.name: t.state_dict() for t in self.transforms}
        kept = {name: state for name, state in kept.items() if state is not None}
        if inner is None and not kept:
            return None
        return {"inner": inner, "transforms": kept}

    def load_state_dict(self, state: dict) -> None:
        if state.get("inner") is not None:
            self.inner.load_state_dict(state["inner"])
        for transform in self.transforms:
            if transform.name in state["transforms"]:
                transform.load_state_dict(state["transforms"][transform.name])

    def aggregation(self, new_aggregation: Callable[[], Aggregation]) -> Aggregation:
        """A fresh aggregation for an attempt about to train, wrapped by every transform."""
        aggregation = new_aggregation()
        for transform in self.transforms:
            aggregation = transform.aggregation(aggregation)
        return aggregation

    def fields(self, round_: int) -> dict:
        out: dict = {}
        for transform in self.transforms:
            out.update(transform.fields(round_))
        return out


def make_transforms(setup: ClientSetup) -> list[RoundTransform]:
    """The run's transforms, in the order of FACTORIES; [] when every feature is off."""
    out = []
    for ref in FACTORIES:
        module, _, name = ref.partition(":")
        made = getattr(importlib.import_module(module), name)(setup)
        if made is not None:
            out.append(made)
    return out


def with_transforms(
    setup: ClientSetup, executor: Executor, new_aggregation: Callable[[], Aggregation]
) -> tuple[Executor, Callable[[], Aggregation], Callable[[int], dict] | None]:
    """(executor, new_aggregation, round fields) with the run's transforms in the seam; the
    ones given, and no fields, when every feature is off."""
    transforms = make_transforms(setup)
    if not transforms:
        return executor, new_aggregation, None
    wrapped = TransformedExecutor(executor, transforms)
    return wrapped, lambda: wrapped.aggregation(new_aggregation), wrapped.fields
