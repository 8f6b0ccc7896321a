"""Registry of strategies: the name typed on the command line -> where its StrategySpec lives.

Each entry is "module:attribute", imported only when that strategy is used, so reading the
registry (the CLI, the config layer) does not load torch. A new paradigm is one module that
builds a `StrategySpec` (see spec.py) plus one line below; `register` adds one from
elsewhere (a test, a plugin) under the same rules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from distlab.strategies.spec import StrategyBase, StrategySpec

if TYPE_CHECKING:
    from distlab.config import RunConfig

__all__ = ["STRATEGIES", "StrategyBase", "StrategySpec", "get_spec", "register", "spec_ref"]

STRATEGIES: dict[str, str] = {
    "centralized": "distlab.strategies.centralized:SPEC",
    "allreduce": "distlab.strategies.allreduce:SPEC",
    "ddp": "distlab.strategies.ddp:SPEC",
    "param-server": "distlab.strategies.param_server:SPEC",
    "fedavg": "distlab.strategies.fedavg:SPEC",
    "fedbuff": "distlab.strategies.fedbuff:SPEC",
    "local-sgd": "distlab.strategies.local_sgd:SPEC",
    "hogwild": "distlab.strategies.hogwild:SPEC",
    "pipeline": "distlab.strategies.pipeline:SPEC",
    "distill": "distlab.strategies.distill:SPEC",
    "gossip": "distlab.strategies.gossip:SPEC",
}


def register(name: str, ref: str) -> None:
    """Add a strategy whose spec is at `ref` ("package.module:ATTRIBUTE"). The reference,
    not the object, travels to spawned processes, so the module must be importable there."""
    if name in STRATEGIES and STRATEGIES[name] != ref:
        raise ValueError(f"strategy {name!r} is already registered ({STRATEGIES[name]})")
    STRATEGIES[name] = ref


def spec_ref(name: str) -> str:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r} (allowed: {', '.join(STRATEGIES)})")
    return STRATEGIES[name]


def load_spec(ref: str) -> StrategySpec:
    """The StrategySpec at "module:attribute"."""
    module, _, attr = ref.partition(":")
    spec = getattr(importlib.import_module(module), attr)
    if not isinstance(spec, StrategySpec):
        raise ValueError(f"{ref} is not a StrategySpec")
    return spec


def get_spec(name: str) -> StrategySpec:
    spec = load_spec(spec_ref(name))
    if spec.name != name:
        raise ValueError(f"{STRATEGIES[name]} holds strategy {spec.name!r}, not {name!r}")
    return spec


def params_for(name: str) -> type[StrategyBase]:
    return get_spec(name).params


def check_config(cfg: RunConfig, spec: StrategySpec | None = None) -> None:
    """Run the chosen strategy's cross-field checks, then check the fault's rank against
    the strategy's process count; they raise ValueError."""
    spec = spec or get_spec(cfg.strategy.name)
    if cfg.partition.scheme != "iid" and not spec.uses_partition:
        raise ValueError(
            f"--partition {cfg.partition.scheme} applies to federated strategies; under "
            f"{cfg.strategy.name} workers share the data through --sampler "
            "(split-batch, random or balanced)"
        )
    if spec.no_compression and cfg.compress.names:
        raise ValueError(
            f"compress.kind={cfg.compress.kind} is not carried by strategy {spec.name}: "
            f"{spec.no_compression}"
        )
    check_threats(cfg, spec)
    spec.check(cfg)
    check_fault_rank(cfg, spec)


def threats_on(cfg: RunConfig) -> dict[str, str]:
    """The privacy and robustness features a run turns on: feature -> the setting."""
    on = {}
    if cfg.privacy.mode != "none":
        on[cfg.privacy.mode] = f"privacy.mode={cfg.privacy.mode}"
    if cfg.secagg.enabled:
        on["secagg"] = "secagg.enabled=true"
    if cfg.attack.kind != "none":
        on["attack"] = f"attack.kind={cfg.attack.kind}"
    return on


def check_threats(cfg: RunConfig, spec: StrategySpec) -> None:
    """Refuse a privacy or robustness feature the strategy does not carry, naming those
    that carry it."""
    for feature, setting in threats_on(cfg).items():
        if feature not in spec.threats:
            carriers = [n for n in STRATEGIES if feature in get_spec(n).threats]
            where = f"strategies that carry it: {', '.join(carriers)}" if carriers else "none yet"
            raise ValueError(f"{setting} is not carried by strategy {spec.name} ({where})")


def check_fault_rank(cfg: RunConfig, spec: StrategySpec) -> None:
    """A fault on a rank the run does not have would never fire."""
    if cfg.fault is None:
        return
    world = spec.processes(cfg)
    if cfg.fault.rank >= world:
        ranks = "rank 0" if world == 1 else f"ranks 0 to {world - 1}"
        raise ValueError(
            f"fault.rank must be < {world}, the run's process count (got {cfg.fault.rank}; "
            f"strategy {cfg.strategy.name} with --workers {cfg.workers} runs {ranks})"
        )
