"""The executor table: where a federated run's clients train, one entry per executor.

An entry says what the server rank builds (`start`), what every other rank runs (`host`;
None for an executor that runs in one process), the executor's own config rules and the
rules that need the dataset, how its run is launched, its own summary figures and whether
the server's Communicator sees the clients' traffic. Each executor module carries these
(processes.py, vectorized.py, sequential.py, flower.py, serial.py); this module only lists
them and resolves a run's `executor` setting, so a strategy asks `executor_for(cfg)` and
never names an executor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from torch import nn

from distlab.federated import flower, processes, sequential, serial, vectorized
from distlab.federated.clients import ClientData, LocalSpec
from distlab.federated.compression import check_compression
from distlab.federated.types import Executor
from distlab.federated.vectorized import VectorTrainer

if TYPE_CHECKING:
    from distlab.config import RunConfig
    from distlab.runtime.context import WorkerContext


@dataclass(frozen=True)
class ExecutorKind:
    """One executor: how its server and its hosts start, and the rules it adds to a run."""

    name: str
    start: Callable[[ClientSetup], Executor]
    """The executor the server rank trains its clients on."""
    host: Callable[[ClientSetup], object] | None = None
    """What every rank but the server runs; None for an executor that runs in one process."""
    rules: Callable[[RunConfig], None] | None = None
    """The executor's own config rules, after the one-process rule."""
    data_rules: Callable[[RunConfig, object], None] | None = None
    """Rules that need the dataset (a board's model size), before any process starts."""
    launcher: str = "auto"
    """"auto", or "deployed" for an executor whose clients are other programs: such a run
    is started by `distlab deploy`, never by `distlab run`."""
    summary: Callable[[list[dict]], dict] | None = None
    """The executor's own summary figures from the lead's events (what a deployment ran)."""
    measured: bool = False
    """Whether the server's Communicator counts every client's traffic."""

    def processes(self, cfg: RunConfig) -> int:
        """The server, plus one process per client host (--workers) when it has hosts."""
        return 1 if self.host is None else cfg.workers + 1

    def check(self, cfg: RunConfig) -> None:
        """The executor's rules; ValueError names the first one broken."""
        check_compression(cfg, self.name)
        if self.host is None and cfg.workers != 1:
            raise ValueError(
                f"executor {self.name} runs in one process; --workers must be 1 (got {cfg.workers})"
            )
        if self.rules is not None:
            self.rules(cfg)

    def check_data(self, cfg: RunConfig, data) -> None:
        """The executor's rules on the dataset; none for most executors."""
        if self.data_rules is not None:
            self.data_rules(cfg, data)

    def summary_of(self, lead: list[dict]) -> dict:
        """The executor's figures for the run's summary; {} for most executors."""
        return self.summary(lead) if self.summary is not None else {}


@dataclass
class ClientSetup:
    """What an executor is built from on its rank: the run's context, the model, the
    clients' data, how they train locally and the run's executor."""

    ctx: WorkerContext
    model: nn.Module
    data: ClientData
    spec: LocalSpec
    kind: ExecutorKind

    @cached_property
    def trainer(self) -> VectorTrainer:
        """Trains many clients at once: the vectorized executor and personalization."""
        return VectorTrainer(self.model, self.spec, self.ctx.data.x_train, self.ctx.data.y_train)


EXECUTORS: dict[str, ExecutorKind] = {
    kind.name: kind
    for kind in (
        ExecutorKind(
            "processes",
            processes.start_processes,
            processes.host_processes,
            processes.check_hosts,
            measured=True,
        ),
        ExecutorKind("vectorized", vectorized.start_vectorized),
        ExecutorKind("sequential", sequential.start_sequential),
        ExecutorKind(
            "flower",
            flower.start_flower,
            launcher="deployed",
            summary=flower.deployed_summary,
            measured=True,
        ),
        ExecutorKind(
            "serial",
            serial.start_serial,
            rules=serial.check_serial,
            data_rules=serial.check_serial_data,
            measured=True,
        ),
    )
}


def executor_for(cfg: RunConfig) -> ExecutorKind:
    """The run's executor: its `executor` setting, where `auto` is processes when
    --workers > 1, else vectorized."""
    name = cfg.strategy.executor
    if name == "auto":
        name = "processes" if cfg.workers > 1 else "vectorized"
    return EXECUTORS[name]
