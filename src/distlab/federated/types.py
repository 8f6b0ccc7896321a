"""What crosses between the federated round loop and an executor (`Updates`, `Executor`) or
an aggregation rule (`Aggregation`).

The server (server.py) and every executor (processes.py, vectorized.py, sequential.py, and
later a Flower or a serial-line one) import this module and nothing of each other, so there
is no import circle and a new transport plugs in without touching the round loop. An
executor may hand back one (clients, P) float tensor in the model's parameter order, or,
when its transport carries named arrays (Flower's ArrayRecords, a board's reply), build the
rows with `Updates.from_named`, which marks replies that do not fit the layout and clients
whose reply never came.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Layout:
    """The names and shapes of a model's parameters, in the order of its flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, model: nn.Module) -> Layout:
        named = list(model.named_parameters())
        return cls(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    @property
    def sizes(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Name -> view of one flat vector, shaped as the parameter."""
        views = torch.split(flat, self.sizes)
        return {n: v.view(s) for n, v, s in zip(self.names, views, self.shapes, strict=True)}

    def join(self, arrays: Mapping[str, object]) -> torch.Tensor:
        """One flat float32 vector from name -> array; ValueError when a name is missing or
        a shape differs from the layout's."""
        parts = []
        for name, shape in zip(self.names, self.shapes, strict=True):
            if name not in arrays:
                raise ValueError(f"update lacks parameter {name!r} (expected: {self.names})")
            value = torch.as_tensor(np.asarray(arrays[name]), dtype=torch.float32)
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"parameter {name!r} has shape {tuple(value.shape)}, expected {shape}"
                )
            parts.append(value.reshape(-1))
        return torch.cat(parts) if parts else torch.zeros(0)


@dataclass
class Updates:
    """What came back from the clients of one round, one row per client: the parameters
    (rows in the model's flat order), sample counts and per-client metrics ("loss" always).
    `malformed` marks rows whose reply did not fit the layout (their values are NaN)."""

    clients: np.ndarray
    params: torch.Tensor
    num_examples: np.ndarray
    metrics: dict[str, np.ndarray]
    layout: Layout | None = None
    malformed: np.ndarray | None = field(default=None)
    lost: dict[int, str] = field(default_factory=dict)
    """Clients whose reply never came (a node that stopped answering, an error reply):
    client -> why; their rows are NaN and the server rejects them with that reason."""

    @property
    def losses(self) -> np.ndarray:
        return self.metrics["loss"]

    def named(self, row: int) -> dict[str, torch.Tensor]:
        """One client's parameters as name -> tensor (needs the layout)."""
        if self.layout is None:
            raise ValueError("these updates carry no layout; build them with a Layout")
        return self.layout.split(self.params[row])

    def select(self, rows: np.ndarray) -> Updates:
        """The updates of the given row positions, in that order."""
        index = torch.from_numpy(np.array(rows, dtype=np.int64))  # a copy: rows may be reversed
        kept = set(self.clients[rows].tolist()) if self.lost else set()
        return Updates(
            self.clients[rows],
            self.params[index],
            self.num_examples[rows],
            {k: v[rows] for k, v in self.metrics.items()},
            self.layout,
            None if self.malformed is None else self.malformed[rows],
            {c: why for c, why in self.lost.items() if c in kept},
        )

    @classmethod
    def from_named(
        cls,
        clients: Sequence[int],
        replies: Sequence[Mapping[str, object]],
        num_examples: Sequence[int],
        metrics: Mapping[str, Sequence[float]],
        layout: Layout,
        lost: Mapping[int, str] | None = None,
    ) -> Updates:
        """Updates from replies of name -> array, as a transport that is not torch's hands
        them over; a reply that does not fit `layout` becomes a NaN row marked malformed,
        so the server rejects that client instead of failing the round. `lost` names the
        clients that sent no reply (their reply is None) and why."""
        rows = torch.full((len(replies), layout.size), float("nan"))
        bad = np.zeros(len(replies), dtype=bool)
        for i, reply in enumerate(replies):
            if reply is None:
                continue
            try:
                rows[i] = layout.join(reply)
            except ValueError:
                bad[i] = True
        return cls(
            np.asarray(clients, dtype=np.int64),
            rows,
            np.asarray(num_examples, dtype=np.int64),
            {k: np.asarray(v, dtype=np.float64) for k, v in metrics.items()},
            layout,
            bad,
            dict(lost or {}),
        )


class Aggregation(Protocol):
    """One round's aggregate, fed the usable updates chunk by chunk in client order
    (strategies/aggregate.py: a streaming weighted mean, or a rule that collects them)."""

    def add(self, updates: torch.Tensor, num_examples: np.ndarray) -> None:
        """Fold in one chunk: (clients, P) rows and their sample counts."""

    def result(self) -> torch.Tensor:
        """The aggregate of every chunk added, shape (P,)."""


class Executor(Protocol):
    """Where clients train: a process group, one process, remote machines, boards."""

    def train(self, round_: int, start: torch.Tensor, clients: np.ndarray) -> Updates:
        """Train `clients` from the global parameters `start`; one row per client."""

    def close(self) -> None:
        """Release the clients (tell remote hosts to stop)."""
