"""The executor table: a run's `executor` setting resolves to one entry, which answers the
process count, its rules and its summary figures for every executor."""

from __future__ import annotations

import pytest

from distlab.config import validate_config
from distlab.federated.executors import EXECUTORS, executor_for


def config(executor: str = "auto", workers: int = 1):
    """A valid run's config with the executor and workers swapped in unchecked: the table's
    rules are what is under test."""
    cfg = validate_config({"dataset": "digits", "strategy": {"name": "fedavg", "clients": 4}})
    strategy = cfg.strategy.model_copy(update={"executor": executor})
    return cfg.model_copy(update={"workers": workers, "strategy": strategy})


def test_auto_is_processes_with_several_workers_else_vectorized():
    assert executor_for(config(workers=2)).name == "processes"
    assert executor_for(config(workers=1)).name == "vectorized"
    assert executor_for(config("sequential")).name == "sequential"


def test_hosts_add_a_process_each_and_one_process_executors_need_one_worker():
    assert EXECUTORS["processes"].processes(config(workers=3)) == 4
    for name in ("vectorized", "sequential", "flower", "serial"):
        kind = EXECUTORS[name]
        assert kind.processes(config(name)) == 1
        with pytest.raises(ValueError, match=rf"executor {name} runs in one process"):
            kind.check(config(workers=2))


def test_each_executor_carries_its_own_rules():
    with pytest.raises(ValueError, match="each host needs a client"):
        EXECUTORS["processes"].check(config(workers=5))
    with pytest.raises(ValueError, match="executor serial needs boards"):
        EXECUTORS["serial"].check(config("serial"))


def test_only_a_deployed_executor_adds_summary_figures():
    events = [{"kind": "client", "status": "connected", "client": c} for c in (0, 1)]

    assert EXECUTORS["flower"].summary_of(events) == {"workers": 2, "processes": 3}
    assert EXECUTORS["vectorized"].summary_of(events) == {}
    assert EXECUTORS["flower"].launcher == "deployed"
