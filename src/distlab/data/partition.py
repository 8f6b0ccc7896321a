"""Partition schemes: how training data is divided among workers or clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class _Scheme(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class IidPartition(_Scheme):
    """Shuffled, equal sizes (sizes differ by at most 1)."""

    scheme: Literal["iid"] = "iid"


class DirichletPartition(_Scheme):
    """Per class, proportions ~ Dir(alpha) over clients (Yurochkin et al. 2019)."""

    scheme: Literal["dirichlet"] = "dirichlet"
    alpha: float = Field(0.5, gt=0)
    """Concentration; small alpha = each client dominated by a few classes. Must be > 0."""
    min_size: int = Field(10, ge=0)
    """Redraw until every client holds at least this many samples."""
    balance: bool = True
    """Stop giving a class to clients that already hold more than N/K samples."""


class ShardsPartition(_Scheme):
    """Sort by label, cut into equal shards, deal shards_per_client to each (McMahan et al. 2017)."""

    scheme: Literal["shards"] = "shards"
    shards_per_client: int = Field(2, ge=1)
    """Shards each client receives."""


class ClassesPartition(_Scheme):
    """Each client holds exactly classes_per_client classes (label-quantity skew)."""

    scheme: Literal["classes"] = "classes"
    classes_per_client: int = Field(2, ge=1)
    """Classes each client holds."""


class QuantityPartition(_Scheme):
    """Client sizes skewed, labels IID: sizes ~ Dirichlet(alpha) with min_size."""

    scheme: Literal["quantity"] = "quantity"
    alpha: float = Field(1.0, gt=0)
    """Concentration of the size proportions; small alpha = very unequal sizes."""
    min_size: int = Field(10, ge=0)
    """Smallest client size."""


PARTITION_SCHEMES: dict[str, type[_Scheme]] = {
    "iid": IidPartition,
    "dirichlet": DirichletPartition,
    "shards": ShardsPartition,
    "classes": ClassesPartition,
    "quantity": QuantityPartition,
}

PartitionConfig = Annotated[
    Union[tuple(PARTITION_SCHEMES.values())],  # noqa: UP007
    Field(discriminator="scheme"),
]


@dataclass(frozen=True)
class Partition:
    """Index arrays, one per part, and the parts x classes count matrix."""

    indices: list[np.ndarray]
    counts: np.ndarray

    @property
    def sizes(self) -> list[int]:
        return [len(i) for i in self.indices]


def count_classes(labels: np.ndarray, indices: list[np.ndarray], classes: int) -> np.ndarray:
    return np.stack([np.bincount(labels[i], minlength=classes) for i in indices])


def partition(labels, num_parts: int, config: _Scheme | None = None, seed: int = 0) -> Partition:
    """Split sample indices into num_parts parts by the configured scheme (deterministic)."""
    labels = np.asarray(labels)
    config = config or IidPartition()
    if num_parts < 1:
        raise ValueError(f"clients must be >= 1 (got {num_parts})")
    if num_parts > len(labels):
        raise ValueError(f"clients ({num_parts}) must be <= samples ({len(labels)})")
    rng = np.random.default_rng(seed)
    parts = _SPLITTERS[config.scheme](labels, num_parts, config, rng)
    classes = int(labels.max()) + 1 if len(labels) else 0
    return Partition(parts, count_classes(labels, parts, classes))


def split_iid(labels, num_parts, config, rng) -> list[np.ndarray]:
    return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), num_parts)]


_SPLITTERS = {"iid": split_iid}
