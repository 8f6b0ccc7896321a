"""Federated averaging and its family: FedAvg, FedSGD, FedProx, FedAvgM, FedAdam, FedAdagrad,
FedYogi.

McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from Decentralized
Data": each round the server sends the global model to a sample of clients, each trains
locally on its own partition, and the server averages the returned models weighted by
sample counts. The round loop lives in distlab.federated.server and knows no strategy: this
module maps its Params to a RoundPlan, an aggregate function (strategies/aggregate.py), a
server step (federated/optimizers.py) and the executor the run names in the table of
federated/executors.py (processes, vectorized, sequential, flower, serial), which also
brings the executor's own rules, launcher and summary figures.

    distlab run --strategy fedavg --clients 100 --rounds 50 --set strategy.clients_per_round=10
    distlab run --strategy fedavg --clients 4 --workers 4 --partition dirichlet --alpha 0.1
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from distlab.federated.attacks import (
    attack_success,
    attacked_partition,
    check_attack,
    check_attack_data,
    poison_clients,
)
from distlab.federated.clients import client_data, local_spec
from distlab.federated.compression import logical_bytes, with_chain_step, with_compression
from distlab.federated.evaluation import local_accuracy, nanmean
from distlab.federated.executors import ClientSetup, executor_for
from distlab.federated.optimizers import ServerOptions, ServerStep, server_step
from distlab.federated.personalization import personalized_accuracy
from distlab.federated.privacy import check_central
from distlab.federated.private_local import check_local_privacy
from distlab.federated.processes import SERVER
from distlab.federated.seam import TransformedExecutor, with_transforms
from distlab.federated.secagg import check_secagg
from distlab.federated.server import RoundPlan, after_round, resumed_rounds, train_rounds
from distlab.federated.stragglers import round_clock
from distlab.federated.types import Aggregation, Updates
from distlab.strategies.aggregate import AggregatorOptions, needed_updates, start_aggregation
from distlab.strategies.fedavg_params import Params
from distlab.strategies.robust import DELTA_RULES, DeltaRule, check_defense
from distlab.strategies.spec import StrategySpec, model_fits_data
from distlab.training import flat_params, set_flat_params

if TYPE_CHECKING:
    from distlab.config import RunConfig
    from distlab.runtime.context import WorkerContext


def processes(cfg: RunConfig) -> int:
    return executor_for(cfg).processes(cfg)


def launcher(cfg: RunConfig) -> str:
    return executor_for(cfg).launcher


def role(cfg: RunConfig, rank: int) -> str:
    return "server" if rank == SERVER else "client-host"


def check(cfg: RunConfig) -> None:
    """Rules that span several fields."""
    p = cfg.strategy
    per_round = p.clients_per_round or p.clients
    if p.clients_per_round is not None and p.clients_per_round > p.clients:
        raise ValueError(
            f"strategy.clients_per_round ({p.clients_per_round}) must be <= clients ({p.clients})"
        )
    executor_for(cfg).check(cfg)
    check_central(cfg)
    check_attack(cfg, executor_for(cfg).name)
    check_local_privacy(cfg)
    check_secagg(cfg)
    if p.algorithm == "fedsgd" and (p.local_epochs != 1 or p.local_batch not in (None, "full")):
        raise ValueError(
            "algorithm fedsgd takes one full-batch local step: local_epochs must be 1 and "
            f"local_batch 'full' or unset (got {p.local_epochs}, {p.local_batch!r})"
        )
    if p.mu and p.algorithm != "fedprox":
        raise ValueError(
            f"strategy.mu applies to algorithm fedprox only (algorithm is {p.algorithm!r})"
        )
    if p.min_clients > per_round:
        raise ValueError(
            f"strategy.min_clients ({p.min_clients}) must be <= clients per round ({per_round})"
        )
    check_defense(p.aggregator, p.krum_f, per_round, cfg.attack)
    if p.finetune and not p.local_test_fraction:
        raise ValueError("strategy.finetune needs strategy.local_test_fraction > 0 to test on")
    if isinstance(p.local_batch, int) and p.local_batch < 1:
        raise ValueError(f"strategy.local_batch must be >= 1 or 'full' (got {p.local_batch})")


def check_data(cfg: RunConfig, data) -> None:
    model_fits_data(cfg, data)
    executor_for(cfg).check_data(cfg, data)
    check_attack_data(cfg, data)


# --- the server's rules: Params -> plan, aggregate, server step ---------------------------------

# Each algorithm's server optimizer (federated/optimizers.py); local training differs by
# local_spec (FedProx's mu, FedSGD's one full batch).
SERVER_OPTIMIZER = {
    "fedavg": "sgd",
    "fedsgd": "sgd",
    "fedprox": "sgd",
    "fedavgm": "momentum",
    "fedadam": "adam",
    "fedadagrad": "adagrad",
    "fedyogi": "yogi",
}


def aggregator_options(params: Params) -> AggregatorOptions:
    p = params
    return AggregatorOptions(
        p.trim_ratio, p.krum_f, norm_bound=p.norm_bound, clip_radius=p.clip_radius,
        clip_iters=p.clip_iters,
    )  # fmt: skip


def round_plan(cfg: RunConfig, params: Params) -> RoundPlan:
    """The round loop's plan: a round needs min_clients usable updates, and more than
    2f + 2 under Krum."""
    needed = needed_updates(params.aggregator, aggregator_options(params))
    return RoundPlan(
        rounds=params.rounds,
        clients=params.clients,
        clients_per_round=params.clients_per_round or params.clients,
        seed=cfg.seed,
        needed=max(params.min_clients, needed),
        max_retries=params.max_retries,
        failure_rate=params.client_failure_rate,
        local_epochs=params.local_epochs,
        eval_every=cfg.eval_every or default_eval_every(params.rounds),
        chunk=params.aggregate_chunk,
        poisson=cfg.privacy.mode == "central",
    )


def default_eval_every(rounds: int) -> int:
    """Every tenth of the rounds: a test-set evaluation of LeNet on 1,000 images costs more
    than a vectorized round, so evaluating every round would double a long run."""
    return max(1, rounds // 10)


def make_aggregation(params: Params, executor=None) -> Callable[[], Aggregation]:
    """A fresh aggregation of the configured rule for each attempt at a round, fed chunk by
    chunk (the weighted mean streams; the robust rules collect every update). A rule on
    deltas reads the round's start from `executor.base` (robust.py's DeltaRule)."""
    options = aggregator_options(params)
    if params.aggregator not in DELTA_RULES:
        return lambda: start_aggregation(params.aggregator, options)
    if executor is None:
        raise ValueError(f"aggregator {params.aggregator} needs the round's start (an executor)")
    new_inner = lambda center: start_aggregation(  # noqa: E731
        params.aggregator, replace(options, clip_center=center)
    )
    return DeltaRule(new_inner, lambda: executor.base)


def make_aggregate(params: Params) -> Callable[[Updates], torch.Tensor]:
    """The configured aggregator over one round's client models, all at once."""
    new_aggregation = make_aggregation(params)

    def aggregate(updates: Updates) -> torch.Tensor:
        aggregation = new_aggregation()
        aggregation.add(updates.params, updates.num_examples)
        return aggregation.result()

    return aggregate


def make_server_step(params: Params) -> ServerStep:
    """The algorithm's server optimizer with the configured hyperparameters."""
    p = params
    options = ServerOptions(p.server_lr, p.server_momentum, p.beta1, p.beta2, p.tau)
    return server_step(SERVER_OPTIMIZER[params.algorithm], options)


def round_count(cfg: RunConfig, labels) -> int:
    """The rounds the server counts: the unit of fault.step for FedAvg."""
    return cfg.strategy.rounds


def run(ctx: WorkerContext, params: Params) -> None:
    setup = client_setup(ctx, params)
    if ctx.rank != SERVER:
        setup.kind.host(setup)
        return
    final = serve(setup, params, make_evaluator(setup, params))
    set_flat_params(setup.model, final.clone())
    ctx.save_model(setup.model)


def client_setup(ctx: WorkerContext, params: Params) -> ClientSetup:
    """This rank's clients, model and executor: the one place a rank resolves its executor."""
    model, spec, kind = ctx.build_model(), local_spec(ctx.cfg), executor_for(ctx.cfg)
    clients = client_data(ctx, params)
    poison_clients(ctx, clients)  # a data attack: the attackers' samples, on every rank
    return ClientSetup(ctx, model, clients, spec, kind)


def serve(setup: ClientSetup, params: Params, on_eval) -> torch.Tensor:
    """The server's rounds on the configured executor; returns the final global parameters."""
    ctx = setup.ctx
    executor = with_compression(setup, setup.kind.start(setup))
    if params.aggregator in DELTA_RULES:
        executor = TransformedExecutor(executor, [])  # keeps the round's start in .base
    new_aggregation = with_chain_step(make_aggregation(params, executor), executor)
    executor, new_aggregation, fields = with_transforms(setup, executor, new_aggregation)
    try:
        return train_rounds(
            round_plan(ctx.cfg, params),
            executor,
            new_aggregation,
            make_server_step(params),
            flat_params(setup.model).clone(),
            ctx.recorder,
            on_eval,
            resumed=resumed_rounds(ctx),
            on_round_end=after_round(ctx, executor),
            clock=round_clock(setup),
            round_fields_of=fields,
        )
    finally:
        executor.close()


def make_evaluator(setup: ClientSetup, params: Params):
    """on_eval(round, global): test-set eval event with the clients' mean local accuracy and,
    after the last round, their mean accuracy after `finetune` personalization steps."""
    ctx, model, clients = setup.ctx, setup.model, setup.data
    x, y = ctx.data.x_train, ctx.data.y_train
    local = params.local_test_fraction > 0

    def on_eval(round_: int, current: torch.Tensor) -> None:
        set_flat_params(model, current.clone())
        extra = {}
        if local:
            extra["client_accuracy"] = nanmean(local_accuracy(model, clients, x, y))
        if local and params.finetune and round_ == params.rounds:
            acc = personalized_accuracy(
                setup.trainer, current, clients, params.finetune, ctx.cfg.seed
            )
            extra["personalized_accuracy"] = nanmean(acc)
        success = attack_success(model, ctx)
        if success is not None:
            extra["attack_success"] = success
        ctx.evaluate(model, round=round_, **extra)

    return on_eval


def comm_analysis(cfg, per_rank: dict, params: int, units: int) -> dict:
    """FedAvg's logical traffic per sampled client per round, model down and update up (2 * P
    * 4 bytes; compressed, the chain's payload up, and down with compress.downlink), next to
    what the process executor's server measured. The server sends the model once per host
    with sampled clients, so measured bytes down can be below the logical figure; headers
    and the per-client figures add a little."""
    p = cfg.strategy
    per_round = sum(logical_bytes(cfg, params)) * (p.clients_per_round or p.clients)
    out = {
        "bytes_per_round_logical": per_round,
        "bytes_total_logical": per_round * units,
        # a round's figures are the server's: every sampled client's traffic together
        "bytes_per_round_scope": "per round, all clients",
    }
    return out | server_measured(cfg, per_rank, units)


def server_measured(cfg, per_rank: dict, units: int) -> dict:
    """The server Communicator's count, where every client's traffic goes through it."""
    server = per_rank.get(str(SERVER))
    if not (executor_for(cfg).measured and server):
        return {}
    total = server["bytes_sent"] + server["bytes_recv"]
    return {"bytes_total_measured": total, "bytes_per_round_measured": round(total / units, 1)}


def extra_summary(cfg, lead: list[dict]) -> dict:
    """The executor's figures: a deployed run's workers and processes are its SuperNodes'."""
    return executor_for(cfg).summary_of(lead)


def batch_meaning(cfg) -> str:
    return "per client (local batch)"


SPEC = StrategySpec(
    "fedavg",
    Params,
    run,
    processes=processes,
    role=role,
    check=check,
    data_partition=attacked_partition,
    comm_analysis=comm_analysis,
    batch_meaning=batch_meaning,
    extra_summary=extra_summary,
    uses_partition=True,  # clients own partitions made by the `partition` config
    part_holder="client",
    steps=round_count,
    launcher=launcher,
    network="fedavg",
    summary_rows=(
        ("bytes/round logical", "bytes_per_round_logical"),
        ("bytes/round measured", "bytes_per_round_measured"),
    ),
    check_data=check_data,
    threats=frozenset({"attack", "secagg", "central", "dpsgd"}),
)
