"""Registry of strategies: the name typed on the command line -> the module that runs it.

A strategy module defines `Params` (a frozen pydantic model whose `name` field is a Literal
of the strategy's name), `processes(cfg) -> int`, `role(cfg, rank) -> str` and
`run(ctx, params)`. It may define `check(cfg)` for rules that span several config fields,
`data_partition(cfg, labels)` for the record of who trains on what, and `USES_PARTITION =
True` when it divides the data by the `partition` config.
Adding a paradigm means adding its module and one line below.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Union

from pydantic import Field

if TYPE_CHECKING:
    from distlab.config import RunConfig

STRATEGIES: dict[str, str] = {
    "centralized": "distlab.strategies.centralized",
    "allreduce": "distlab.strategies.allreduce",
    "ddp": "distlab.strategies.ddp",
    "param-server": "distlab.strategies.param_server",
    "fedavg": "distlab.strategies.fedavg",
}


def strategy_module(name: str) -> ModuleType:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r} (allowed: {', '.join(STRATEGIES)})")
    return importlib.import_module(STRATEGIES[name])


def params_for(name: str):
    return strategy_module(name).Params


StrategyParams = Annotated[
    Union[tuple(params_for(n) for n in STRATEGIES)],  # noqa: UP007
    Field(discriminator="name"),
]


def check_config(cfg: RunConfig) -> None:
    """Run the chosen strategy's cross-field checks; they raise ValueError."""
    module = strategy_module(cfg.strategy.name)
    if cfg.partition.scheme != "iid" and not getattr(module, "USES_PARTITION", False):
        raise ValueError(
            f"--partition {cfg.partition.scheme} applies to federated strategies; under "
            f"{cfg.strategy.name} workers share the data through --sampler "
            "(split-batch, random or balanced)"
        )
    if hasattr(module, "check"):
        module.check(cfg)


def processes_for(cfg: RunConfig) -> int:
    return strategy_module(cfg.strategy.name).processes(cfg)
