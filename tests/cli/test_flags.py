"""The config flags, declared once: a command takes them where its `flags` parameter stands,
and compare's cells come from the experiments layer."""

from __future__ import annotations

import inspect

import pytest
import typer

from distlab.cli.flags import CONFIG_FLAGS, LAZY, config_keys, with_config_flags
from distlab.experiments.compare import COMPARE_CELLS, compare_cells


def test_a_command_takes_the_config_flags_where_its_flags_parameter_stands():
    @with_config_flags(skip=("name",))
    def command(first: int = typer.Option(1), *, flags: dict, last: int = typer.Option(2)):
        return first, flags, last

    names = list(inspect.signature(command).parameters)
    given = {name: None for name in names[1:-1]} | {"lr": 0.1, "config": "exp.yaml"}

    assert names[0] == "first" and names[-1] == "last"
    assert names[1:-1] == [flag.name for flag in CONFIG_FLAGS if flag.name != "name"]
    assert command(first=3, last=4, **given) == (3, given, 4)
    assert config_keys(given)["optimizer.lr"] == 0.1 and "config" not in config_keys(given)


def test_a_command_that_starts_elsewhere_shows_its_own_defaults():
    @with_config_flags(defaults={"strategy": "fedavg", "clients": "3"})
    def command(*, flags: dict):
        return flags

    params = inspect.signature(command).parameters
    plain = {flag.name: flag.option.help for flag in CONFIG_FLAGS}

    assert params["strategy"].default.help.endswith("[default: fedavg]")
    assert params["clients"].default.help == LAZY + "strategy.clients\x003"
    assert plain["strategy"].endswith("[default: centralized]")  # the declaration is untouched
    assert plain["clients"] == LAZY + "strategy.clients"


def test_compare_runs_the_baseline_first_as_one_process():
    assert compare_cells(None, "centralized") == COMPARE_CELLS
    assert compare_cells("fedavg, centralized,allreduce", "centralized") == [
        {"strategy": "centralized", "workers": 1},
        {"strategy": "fedavg"},
        {"strategy": "allreduce"},
    ]
    with pytest.raises(ValueError, match="--strategies has no names"):
        compare_cells(" , ", "centralized")
