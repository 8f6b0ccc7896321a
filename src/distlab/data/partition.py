"""Partition schemes: how training data is divided among workers or clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class _Scheme(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False
    )


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
    """Give no more of any class to a client that already holds >= N/K samples."""
    max_retries: int = Field(100, ge=1)
    """Draws to try before giving up on min_size."""


class ShardsPartition(_Scheme):
    """Sort by label, cut into equal shards, deal shards_per_client each (McMahan et al. 2017)."""

    scheme: Literal["shards"] = "shards"
    shards_per_client: int = Field(2, ge=1)
    """Shards each client receives."""


class ClassesPartition(_Scheme):
    """Each client holds exactly classes_per_client classes (label-quantity skew)."""

    scheme: Literal["classes"] = "classes"
    classes_per_client: int = Field(2, ge=1)
    """Classes each client holds; clients x classes_per_client must be >= the classes."""


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
    """Index arrays, one per part, the parts x classes count matrix and the scheme used;
    `holder` says who holds a part (a federated client, a data-parallel worker) and
    `source`, for parts that no scheme made, how they came about."""

    indices: list[np.ndarray]
    counts: np.ndarray
    config: _Scheme | None = None
    holder: str = "client"
    source: str | None = None
    attackers: list[int] | None = None
    """The parts whose holders attack the run (attack.*); None when no attack is on."""

    @property
    def sizes(self) -> list[int]:
        return [len(i) for i in self.indices]

    @property
    def scheme(self) -> str:
        """The scheme's name; "custom" for parts built by other means (e.g. a sampler)."""
        return self.config.scheme if self.config is not None else "custom"


def count_classes(labels: np.ndarray, indices: list[np.ndarray], classes: int) -> np.ndarray:
    return np.stack([np.bincount(labels[i], minlength=classes) for i in indices])


def make_scheme(scheme: str, **params: Any) -> _Scheme:
    """The config of `scheme` from its parameters (None = default). Unknown schemes and
    parameters of another scheme raise ValueError; bad values raise pydantic's
    ValidationError, which callers turn into one line.

    >>> make_scheme("dirichlet", alpha=0.1, min_size=None)
    DirichletPartition(scheme='dirichlet', alpha=0.1, min_size=10, balance=True, max_retries=100)
    """
    if scheme not in PARTITION_SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r} (allowed: {', '.join(PARTITION_SCHEMES)})")
    model = PARTITION_SCHEMES[scheme]
    given = {k: v for k, v in params.items() if v is not None}
    allowed = [f for f in model.model_fields if f != "scheme"]
    for name in given:
        if name not in allowed:
            raise ValueError(
                f"{name} does not apply to scheme {scheme!r} "
                f"(allowed: {', '.join(allowed) or 'none'})"
            )
    return model.model_validate(given)


def partition(labels, num_parts: int, config: _Scheme | None = None, seed: int = 0) -> Partition:
    """Split sample indices into num_parts disjoint parts that together cover every sample,
    by the configured scheme. The same labels, config and seed give the same partition.

    >>> p = partition([0, 0, 1, 1], 2, ShardsPartition(shards_per_client=1), seed=0)
    >>> p.counts.tolist() in ([[2, 0], [0, 2]], [[0, 2], [2, 0]])
    True
    """
    labels = np.asarray(labels).astype(np.int64, copy=False)
    config = config or IidPartition()
    if num_parts < 1:
        raise ValueError(f"clients must be >= 1 (got {num_parts})")
    if num_parts > len(labels):
        raise ValueError(f"clients ({num_parts}) must be <= samples ({len(labels)})")
    if config.scheme not in _SPLITTERS:
        allowed = ", ".join(_SPLITTERS)
        raise ValueError(f"unknown scheme {config.scheme!r} (allowed: {allowed})")
    rng = np.random.default_rng(seed)
    parts = _SPLITTERS[config.scheme](labels, num_parts, config, rng)
    parts = [np.sort(p).astype(np.int64) for p in parts]
    classes = int(labels.max()) + 1 if len(labels) else 0
    return Partition(parts, count_classes(labels, parts, classes), config)


def split_iid(labels, num_parts, config, rng) -> list[np.ndarray]:
    """Shuffle, then cut into num_parts runs whose sizes differ by at most 1."""
    return np.array_split(rng.permutation(len(labels)), num_parts)


def check_min_size(min_size: int, num_parts: int, samples: int) -> None:
    if min_size * num_parts > samples:
        raise ValueError(
            f"min_size {min_size} x {num_parts} clients = {min_size * num_parts} exceeds the "
            f"{samples} samples; lower min_size or clients"
        )


def split_dirichlet(labels, num_parts, config: DirichletPartition, rng) -> list[np.ndarray]:
    """Label skew of Yurochkin et al. 2019, "Bayesian nonparametric federated learning of
    neural networks": for each class, proportions p ~ Dir(alpha) over clients, and the
    class's samples are cut by p. Whole draws are repeated until every client holds at least
    min_size samples, at most max_retries times."""
    check_min_size(config.min_size, num_parts, len(labels))
    for _ in range(config.max_retries):
        parts = draw_dirichlet(labels, num_parts, config, rng)
        if min(len(p) for p in parts) >= config.min_size:
            return parts
    raise ValueError(
        f"dirichlet split could not give every client >= {config.min_size} samples after "
        f"{config.max_retries} tries; lower min_size or raise alpha"
    )


def draw_dirichlet(labels, num_parts, config: DirichletPartition, rng) -> list[np.ndarray]:
    """One draw: per class, cut its shuffled samples by Dir(alpha) proportions."""
    parts: list[list[np.ndarray]] = [[] for _ in range(num_parts)]
    sizes = np.zeros(num_parts, dtype=np.int64)
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        share = rng.dirichlet(np.full(num_parts, config.alpha))
        if config.balance:
            share = balance_share(share, sizes < len(labels) / num_parts)
        # The normalized shares can sum to 1 - 1e-16: without the epsilon a truncated cut
        # would hand the last sample to the last client even when balance closed it.
        cuts = np.floor(np.cumsum(share) * len(idx) + 1e-9).astype(np.int64)[:-1]
        for i, piece in enumerate(np.split(idx, cuts)):
            parts[i].append(piece)
            sizes[i] += len(piece)
    return [np.concatenate(p) for p in parts]


def balance_share(share: np.ndarray, open_: np.ndarray) -> np.ndarray:
    """Zero the share of full clients. Small alpha can put all the mass on full clients
    (the other proportions underflow to 0); then the class is spread evenly over the open
    ones. Some client is always open before the last class, as sizes sum to less than N."""
    share = share * open_
    total = share.sum()
    if total > 0:
        return share / total
    return open_ / open_.sum()


def split_shards(labels, num_parts, config: ShardsPartition, rng) -> list[np.ndarray]:
    """Pathological non-IID split of McMahan et al. 2017, "Communication-Efficient Learning
    of Deep Networks from Decentralized Data": sort by label (ties in seeded random order),
    cut into clients x shards_per_client shards and deal shards_per_client random shards to
    each client. When the samples don't divide evenly, the first N mod S shards hold one
    sample more, so every sample is still dealt."""
    shards = num_parts * config.shards_per_client
    if shards > len(labels):
        raise ValueError(
            f"shards: {num_parts} clients x {config.shards_per_client} shards_per_client = "
            f"{shards} shards exceeds the {len(labels)} samples; lower shards_per_client"
        )
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]
    pieces = np.array_split(order, shards)
    dealt = rng.permutation(shards).reshape(num_parts, config.shards_per_client)
    return [np.concatenate([pieces[s] for s in row]) for row in dealt]


def split_classes(labels, num_parts, config: ClassesPartition, rng) -> list[np.ndarray]:
    """Label-quantity skew (Li et al. 2022, "Federated Learning on Non-IID Data Silos: An
    Experimental Study"): each client holds exactly classes_per_client classes, and each
    class's samples are split evenly among the clients that hold it. Classes are laid out
    in a seeded random cycle and client i takes k consecutive ones from position i*k, so
    every class is held by someone (clients x k >= classes is required)."""
    present = np.unique(labels)
    per, k = len(present), config.classes_per_client
    if not 1 <= k <= per:
        raise ValueError(f"classes_per_client must be in [1, {per}] (got {k})")
    if num_parts * k < per:
        raise ValueError(
            f"classes: {num_parts} clients x {k} classes_per_client = {num_parts * k} < "
            f"{per} classes, so some classes would be held by no client; raise either"
        )
    cycle = rng.permutation(present)
    held = [cycle[(i * k + np.arange(k)) % per] for i in range(num_parts)]
    parts: list[list[np.ndarray]] = [[] for _ in range(num_parts)]
    for cls in present:
        holders = [i for i in range(num_parts) if cls in held[i]]
        idx = rng.permutation(np.flatnonzero(labels == cls))
        if len(idx) < len(holders):
            raise ValueError(
                f"classes: class {cls} has {len(idx)} samples but {len(holders)} clients "
                "hold it; lower clients or classes_per_client"
            )
        for i, piece in zip(holders, np.array_split(idx, len(holders)), strict=True):
            parts[i].append(piece)
    return [np.concatenate(p) for p in parts]


def split_quantity(labels, num_parts, config: QuantityPartition, rng) -> list[np.ndarray]:
    """Quantity skew (Li et al. 2022): labels IID, sizes = min_size each plus the remaining
    samples dealt by multinomial draws with Dir(alpha) proportions."""
    check_min_size(config.min_size, num_parts, len(labels))
    rest = len(labels) - config.min_size * num_parts
    share = rng.dirichlet(np.full(num_parts, config.alpha))
    sizes = config.min_size + rng.multinomial(rest, share)
    return np.split(rng.permutation(len(labels)), np.cumsum(sizes)[:-1])


_SPLITTERS = {
    "iid": split_iid,
    "dirichlet": split_dirichlet,
    "shards": split_shards,
    "classes": split_classes,
    "quantity": split_quantity,
}


# --- heterogeneity ------------------------------------------------------------------------


def tv_distances(counts: np.ndarray) -> np.ndarray:
    """Per part, the total-variation distance 0.5 * |p_i - p|_1 between its class
    distribution and the global one (0 = same mix as the whole; NaN for an empty part)."""
    counts = np.asarray(counts, dtype=np.float64)
    overall = counts.sum(axis=0) / max(counts.sum(), 1.0)
    sizes = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        local = counts / sizes
    return 0.5 * np.abs(local - overall).sum(axis=1)


def partition_metrics(p: Partition) -> dict[str, Any]:
    """Heterogeneity of a partition: sizes (min, median, max), classes per client (classes
    with > 0 samples) and the mean total-variation distance to the global class mix, taken
    over non-empty clients (0 = the global mix everywhere; larger = more label skew).

    >>> m = partition_metrics(Partition([np.array([0]), np.array([1])], np.eye(2, dtype=int)))
    >>> m["tv_distance"], m["classes_per_client"]
    (0.5, [1, 1])
    """
    sizes = np.asarray(p.sizes)
    tv = tv_distances(p.counts)
    return {
        "clients": len(sizes),
        "size_min": int(sizes.min()),
        "size_median": float(np.median(sizes)),
        "size_max": int(sizes.max()),
        "classes_per_client": [int(c) for c in (np.asarray(p.counts) > 0).sum(axis=1)],
        "tv_distance": float(np.nanmean(tv)) if np.isfinite(tv).any() else 0.0,
    }
