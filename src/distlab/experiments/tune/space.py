"""Search spaces: a mapping of names to domains, read from a YAML, TOML or JSON file.

    optimizer.lr: {loguniform: [1.0e-3, 1.0e-1]}
    strategy.local_epochs: {choice: [1, 2, 5]}
    workers: {grid: [1, 2]}

`grid` values are all tried (grids multiply); `choice`, `uniform` and `loguniform` are
sampled once per trial. Validation happens here, before Ray starts: every problem is one
ValueError line naming the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distlab.config import read_config_file

KINDS = ("grid", "choice", "uniform", "loguniform")


@dataclass(frozen=True)
class Domain:
    """One dimension of a search space."""

    kind: str
    values: tuple[Any, ...]

    @property
    def is_grid(self) -> bool:
        return self.kind == "grid"

    def to_ray(self):
        """The Ray Tune domain (Ray imported here, on use)."""
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "uniform":
            return tune.uniform(*self.values)
        return tune.loguniform(*self.values)


def parse_domain(name: str, spec: Any) -> Domain:
    """`{kind: values}` -> Domain; ValueError naming `name` when malformed."""
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ValueError(
            f"search space key {name!r}: expected one of {{{', '.join(KINDS)}}}: [...] "
            f"(got {spec!r})"
        )
    ((kind, values),) = spec.items()
    if kind not in KINDS:
        raise ValueError(
            f"search space key {name!r}: unknown kind {kind!r} (allowed: {', '.join(KINDS)})"
        )
    if not isinstance(values, list) or not values:
        raise ValueError(f"search space key {name!r}: {kind} needs a non-empty list of values")
    if kind in ("uniform", "loguniform"):
        check_bounds(name, kind, values)
    return Domain(kind, tuple(values))


def check_bounds(name: str, kind: str, values: list) -> None:
    if len(values) != 2 or not all(is_number(v) for v in values):
        raise ValueError(f"search space key {name!r}: {kind} needs [low, high] (got {values})")
    low, high = values
    if low > high:
        raise ValueError(f"search space key {name!r}: low {low} > high {high}")
    if kind == "loguniform" and low <= 0:
        raise ValueError(
            f"search space key {name!r}: loguniform bounds must be > 0 (got {low}, {high})"
        )


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_space(path: str | Path) -> dict[str, Domain]:
    """The search space in a file; ValueError (one line) for a malformed or empty one."""
    data = read_config_file(Path(path))
    if not data:
        raise ValueError(f"search space {str(path)!r} is empty: name at least one key")
    return parse_space(data, str(path))


def parse_space(data: dict[str, Any], where: str = "the search space") -> dict[str, Domain]:
    """Nested mappings flatten to dotted names: {optimizer: {lr: {...}}} is optimizer.lr."""
    flat: dict[str, Domain] = {}
    for name, spec in flatten_space(data).items():
        flat[name] = parse_domain(name, spec)
    if not flat:
        raise ValueError(f"{where} is empty: name at least one key")
    return flat


def flatten_space(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        # A mapping naming any kind is a domain (two kinds in one is refused by parse_domain).
        is_domain = isinstance(value, dict) and any(k in KINDS for k in value)
        if isinstance(value, dict) and not is_domain:
            out.update(flatten_space(value, f"{name}."))
        else:
            out[name] = value
    return out


def grid_size(space: dict[str, Domain]) -> int:
    """Configurations one pass over the grid dimensions gives (1 without any grid)."""
    return math.prod(len(d.values) for d in space.values() if d.is_grid)


def to_ray(space: dict[str, Domain]) -> dict[str, Any]:
    return {name: domain.to_ray() for name, domain in space.items()}


def check_trials(trials: int) -> int:
    if trials < 1:
        raise ValueError(f"--trials must be >= 1 (got {trials})")
    return trials
