"""FedBuff: buffered asynchronous aggregation on the simulated clock.

Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation": `concurrency`
clients train at once, each from the global model of when it started, and the server steps
every `buffer` (K) arrivals, global += server_lr * sum_i s(tau_i) delta_i / K, with the
staleness weight s(tau) = 1 / sqrt(1 + tau). A slow client holds up no one: its update
arrives late and counts less. Each trip's duration is the simulated clock's (download,
local samples at the client's speed, upload; the `system.*` keys), so clients of unequal
speed (`system.speed=lognormal`) show what synchronous FedAvg waits for.

The loop lives in distlab.federated.buffered and knows no strategy; this module maps its
Params to a BufferPlan and reuses FedAvg's clients, local training and executors
(vectorized: clients that started from one version train together; processes).

    distlab run --strategy fedbuff --clients 50 --rounds 40 --set system.speed=lognormal \\
        --set strategy.concurrency=20 --set strategy.buffer=10
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from distlab.clock import Clock
from distlab.federated.buffered import BufferPlan, train_buffered
from distlab.federated.clients import client_partition
from distlab.federated.evaluation import local_accuracy, nanmean
from distlab.federated.executors import ClientSetup, executor_for
from distlab.federated.processes import SERVER
from distlab.strategies import fedavg
from distlab.strategies.spec import StrategyBase, StrategySpec
from distlab.training import flat_params, set_flat_params

if TYPE_CHECKING:
    import torch

    from distlab.config import RunConfig
    from distlab.runtime.context import WorkerContext

FEDAVG = fedavg.Params.model_fields


class Params(StrategyBase):
    """Federated learning with K virtual clients training asynchronously: the server
    aggregates every `buffer` arrivals, weighting each update by its staleness."""

    name: Literal["fedbuff"] = "fedbuff"
    clients: int = FEDAVG["clients"]
    rounds: int = Field(10, ge=1)
    """Server aggregations, each of `buffer` arrivals."""
    concurrency: int = Field(10, ge=1)
    """Clients training at once; a client that arrives frees its slot for an idle one."""
    buffer: int = Field(5, ge=1)
    """Arrivals the server buffers before each aggregation (FedBuff's K), <= concurrency."""
    staleness: Literal["sqrt", "constant", "poly"] = "sqrt"
    """Weight of an update tau server versions old: sqrt = 1 / sqrt(1 + tau) (Nguyen et al.
    2022), constant = 1, poly = (1 + tau)^-staleness_exponent."""
    staleness_exponent: float = Field(0.5, gt=0)
    """poly: the exponent a of (1 + tau)^-a."""
    local_epochs: int = FEDAVG["local_epochs"]
    local_batch: int | Literal["full"] | None = FEDAVG["local_batch"]
    executor: Literal["auto", "processes", "vectorized"] = "auto"
    """Where clients train: processes (server on rank 0, clients on ranks 1..workers) or
    vectorized (one process; clients that started from one version train together);
    auto = processes when workers > 1 else vectorized."""
    algorithm: Literal["fedavg", "fedprox"] = "fedavg"
    """Local training: fedavg (plain local SGD) or fedprox (proximal term mu)."""
    mu: float = FEDAVG["mu"]
    server_lr: float = FEDAVG["server_lr"]
    local_test_fraction: float = FEDAVG["local_test_fraction"]


def processes(cfg: RunConfig) -> int:
    return executor_for(cfg).processes(cfg)


def check(cfg: RunConfig) -> None:
    """Rules that span several fields, each a one-line ValueError."""
    p = cfg.strategy
    if p.buffer > p.concurrency:
        raise ValueError(
            f"strategy.buffer ({p.buffer}) must be <= strategy.concurrency ({p.concurrency}): "
            "the server cannot wait for more arrivals than clients in flight"
        )
    if p.concurrency > p.clients:
        raise ValueError(f"strategy.concurrency ({p.concurrency}) must be <= clients ({p.clients})")
    executor_for(cfg).check(cfg)
    if p.mu and p.algorithm != "fedprox":
        raise ValueError(
            f"strategy.mu applies to algorithm fedprox only (algorithm is {p.algorithm!r})"
        )
    if isinstance(p.local_batch, int) and p.local_batch < 1:
        raise ValueError(f"strategy.local_batch must be >= 1 or 'full' (got {p.local_batch})")
    if cfg.compress.names:
        raise ValueError(
            f"compress.kind={','.join(cfg.compress.names)}: fedbuff sends dense updates "
            "(compression is carried by fedavg's rounds); use compress.kind=none"
        )
    if cfg.system.deadline is not None:
        raise ValueError(
            "system.deadline applies to synchronous rounds; fedbuff waits for no one "
            "(leave system.deadline unset)"
        )
    if cfg.checkpoint.every:
        raise ValueError(
            "checkpoint.every: fedbuff keeps clients in flight between aggregations and "
            "writes no checkpoints (use checkpoint.every=0)"
        )


def buffer_plan(cfg: RunConfig, params: Params) -> BufferPlan:
    return BufferPlan(
        rounds=params.rounds,
        clients=params.clients,
        concurrency=params.concurrency,
        buffer=params.buffer,
        seed=cfg.seed,
        server_lr=params.server_lr,
        staleness=params.staleness,
        exponent=params.staleness_exponent,
        eval_every=cfg.eval_every or fedavg.default_eval_every(params.rounds),
        local_epochs=params.local_epochs,
    )


def trip_seconds(clock: Clock, sizes: np.ndarray, epochs: int, model_bytes: int) -> np.ndarray:
    """Each client's simulated trip: the model down, its local samples at its speed, its
    model up, each transfer over its own link."""
    clients = np.arange(len(sizes))
    link = clock.link_seconds(clients, model_bytes)
    return 2 * link + clock.compute_seconds(clients, sizes * epochs)


def run(ctx: WorkerContext, params: Params) -> None:
    setup = fedavg.client_setup(ctx, params)
    if ctx.rank != SERVER:
        setup.kind.host(setup)
        return
    final = serve(setup, params)
    set_flat_params(setup.model, final.clone())
    ctx.save_model(setup.model)


def serve(setup: ClientSetup, params: Params) -> torch.Tensor:
    """The server's aggregations on the configured executor; the final global parameters."""
    ctx = setup.ctx
    start = flat_params(setup.model).clone()
    clock = Clock(ctx.cfg.system, params.clients, ctx.cfg.seed)
    durations = trip_seconds(clock, setup.data.sizes, params.local_epochs, start.numel() * 4)

    def available(version: int, clients: np.ndarray, at: float) -> np.ndarray:
        clock.now = at
        return clock.available(version, clients, at)

    def on_round_end(version: int, current: torch.Tensor) -> None:
        ctx.maybe_fault(version)

    executor = setup.kind.start(setup)
    try:
        return train_buffered(
            buffer_plan(ctx.cfg, params),
            executor,
            durations,
            available,
            start,
            ctx.recorder,
            make_evaluator(setup, params),
            on_round_end,
        )
    finally:
        executor.close()


def make_evaluator(setup: ClientSetup, params: Params):
    """on_eval(version, global, sim_seconds): a test-set eval event at that simulated time,
    with the clients' mean local accuracy when they hold out a local test split."""
    ctx, model = setup.ctx, setup.model

    def on_eval(version: int, current: torch.Tensor, sim_seconds: float) -> None:
        set_flat_params(model, current.clone())
        extra = {}
        if params.local_test_fraction > 0:
            x, y = ctx.data.x_train, ctx.data.y_train
            extra["client_accuracy"] = nanmean(local_accuracy(model, setup.data, x, y))
        ctx.evaluate(model, round=version, sim_seconds=sim_seconds, **extra)

    return on_eval


def comm_analysis(cfg, per_rank: dict, params: int, units: int) -> dict:
    """FedBuff's logical traffic: 2 * P * 4 bytes per client trip (model down, model up),
    K trips an aggregation; next to what the processes executor's server measured. Trips
    still in flight at the end never train, so they are not counted."""
    per_round = 2 * params * 4 * cfg.strategy.buffer
    out = {
        "bytes_per_round_logical": per_round,
        "bytes_total_logical": per_round * units,
        "bytes_per_round_scope": "per aggregation, all K arrivals",
    }
    return out | fedavg.server_measured(cfg, per_rank, units)


def extra_summary(cfg, lead: list[dict]) -> dict:
    """The asynchrony's figures: mean staleness of the aggregated updates and the client
    trips started."""
    rounds = [e for e in lead if e.get("kind") == "round"]
    out = {}
    if rounds:
        out["mean_staleness"] = round(float(np.mean([e["staleness"] for e in rounds])), 3)
    end = [e for e in lead if e.get("kind") == "phase" and e.get("phase") == "train_end"]
    if end and "trips" in end[-1]:
        out["client_trips"] = end[-1]["trips"]
    return out


SPEC = StrategySpec(
    "fedbuff",
    Params,
    run,
    processes=processes,
    role=fedavg.role,
    check=check,
    data_partition=client_partition,
    comm_analysis=comm_analysis,
    batch_meaning=fedavg.batch_meaning,
    extra_summary=extra_summary,
    uses_partition=True,
    part_holder="client",
    steps=fedavg.round_count,
    network=None,
    no_network="asynchronous aggregation on the simulated clock: see its sim_seconds",
    summary_rows=(
        ("bytes/round logical", "bytes_per_round_logical"),
        ("mean staleness", "mean_staleness"),
    ),
    check_data=fedavg.check_data,
)
