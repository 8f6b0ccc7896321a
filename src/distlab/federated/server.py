"""The federated round loop, kept apart from where clients execute and from any strategy.

The server decides: which clients take part (seeded sampling), which of them fail (seeded
failure injection), which returned updates are usable, and in which order they are
combined. What the round does with them comes from outside: a `RoundPlan` (how many rounds,
clients, retries...), a fresh `Aggregation` per attempt (types.py), a pure `server_step` and
an `Executor` (types.py) that trains the clients it is handed.

A round trains its clients plan.chunk at a time, in client-id order: each chunk is screened
and its usable rows are folded into the round's aggregation before the next chunk trains,
so with a streaming rule (the weighted mean) a round holds one chunk of parameter rows
whatever its number of clients; only the clients' ids, sample counts and losses are kept
for the round event. A round of one chunk is what a round was before chunking, bit for bit.

A strategy (fedavg.py) maps its parameters to these; a new executor or aggregation rule
plugs in without touching this module, which imports no strategy. A run's checkpoints of the
loop (`resumed_rounds`, `after_round`) keep the global model and the server optimizer's
state, all a resumed loop needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from distlab.federated.optimizers import ServerOptimizer, ServerStep
from distlab.federated.stragglers import LATE, UNAVAILABLE, Work
from distlab.federated.types import Aggregation, Executor, Updates

if TYPE_CHECKING:
    from distlab.federated.stragglers import RoundClock
    from distlab.runtime.context import WorkerContext

# Stream tags for the server's generators (the clients' streams are in clients.py).
SAMPLE_STREAM = 11
FAILURE_STREAM = 12

# Client ids a RoundFailed message lists before it only counts the rest.
LISTED = 10

# Clients per chunk of a round unless a plan says otherwise: 1,000 LeNet updates are 178 MB.
CHUNK = 1000


class RoundFailed(ValueError):
    """Too few usable client updates in a round, after every retry: the configured failure
    rate and min_clients cannot be met (a ValueError, so the CLI prints one line)."""


@dataclass(frozen=True)
class RoundPlan:
    """What the round loop needs to know of a federated run.

    needed: usable updates a round needs (min_clients, or more for a robust aggregator);
    local_epochs only scales the samples a round event reports; eval_every 0 = every round;
    chunk: clients handed to the executor and folded into the aggregate at a time.
    """

    rounds: int
    clients: int
    clients_per_round: int
    seed: int = 0
    needed: int = 1
    max_retries: int = 3
    failure_rate: float = 0.0
    local_epochs: int = 1
    eval_every: int = 0
    chunk: int = CHUNK
    poisson: bool = False
    """Poisson sampling (central DP): each client takes part in a round with probability
    clients_per_round / clients, so a round has any number of clients."""

    def __post_init__(self) -> None:
        if not 1 <= self.needed <= self.clients_per_round <= self.clients:
            raise ValueError(
                "round plan needs 1 <= needed <= clients_per_round <= clients (got "
                f"{self.needed}, {self.clients_per_round}, {self.clients})"
            )
        if self.chunk < 1:
            raise ValueError(f"round plan chunk must be >= 1 (got {self.chunk})")


@dataclass
class Attempt:
    """One try at a round: its aggregation so far and, per usable client in client order,
    the small figures the round event needs (never the parameter rows)."""

    aggregation: Aggregation
    rejected: dict[int, str] = field(default_factory=dict)
    lost: dict[int, str] = field(default_factory=dict)
    """Clients whose reply never came (the executor's `Updates.lost`): they failed."""
    clients: list[np.ndarray] = field(default_factory=list)
    num_examples: list[np.ndarray] = field(default_factory=list)
    losses: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, kept: Updates, rejected: dict[int, str], lost: dict[int, str]) -> None:
        self.rejected.update(rejected)
        self.lost.update(lost)
        self.clients.append(kept.clients)
        self.num_examples.append(kept.num_examples)
        self.losses.append(kept.losses)
        if len(kept.clients):
            begin = time.perf_counter()
            self.aggregation.add(kept.params, kept.num_examples)
            self.seconds += time.perf_counter() - begin

    @property
    def usable(self) -> int:
        return sum(len(c) for c in self.clients)


@dataclass
class RoundOutcome:
    sampled: np.ndarray
    failed: np.ndarray
    """Injected failures and lost clients (no reply), in client order."""
    rejected: dict[int, str]
    attempts: int
    retried_failed: list[int]
    aggregate: torch.Tensor
    clients: np.ndarray
    """The usable clients, in client order; num_examples and losses are theirs."""
    num_examples: np.ndarray
    losses: np.ndarray
    aggregate_seconds: float
    sim: Work | None = None
    """The last attempt on the simulated clock (stragglers, unavailable clients)."""
    sim_seconds: float = 0.0
    """Simulated seconds of the round, every attempt's together."""


def sample_clients(
    seed: int, round_: int, attempt: int, clients: int, per_round: int, poisson: bool = False
):
    """per_round distinct client ids, sorted, from a generator keyed by (seed, round, attempt);
    with `poisson`, each client independently with probability per_round / clients."""
    rng = np.random.default_rng([seed, SAMPLE_STREAM, round_, attempt])
    if per_round >= clients:
        return np.arange(clients)
    if poisson:
        return np.flatnonzero(rng.random(clients) < per_round / clients)
    return np.sort(rng.choice(clients, size=per_round, replace=False))


def draw_failures(seed: int, round_: int, attempt: int, sampled: np.ndarray, rate: float):
    """A boolean mask over `sampled`: True where the client drops out this round."""
    if rate <= 0:
        return np.zeros(len(sampled), dtype=bool)
    rng = np.random.default_rng([seed, FAILURE_STREAM, round_, attempt])
    return rng.random(len(sampled)) < rate


def screen_updates(updates: Updates, size: int) -> tuple[np.ndarray, dict[int, str]]:
    """Keep updates of the right shape whose values are all finite; returns (keep mask,
    rejected client -> why: "wrong shape", "NaN/Inf" or "no samples"). A lost client (no
    reply: `updates.lost`) is neither kept nor rejected: it failed, as an injected failure."""
    params, clients = updates.params, updates.clients
    lost = np.array([int(c) in updates.lost for c in clients], dtype=bool)
    if params.ndim != 2 or params.shape[1] != size:
        return np.zeros(len(clients), dtype=bool), {int(c): "wrong shape" for c in clients[~lost]}
    shape_ok = np.ones(len(clients), dtype=bool)
    if updates.malformed is not None:
        shape_ok = ~updates.malformed
    finite = finite_rows(params).numpy() & np.isfinite(updates.losses)
    counted = updates.num_examples > 0
    why = np.where(~shape_ok, "wrong shape", np.where(~finite, "NaN/Inf", "no samples"))
    keep = shape_ok & finite & counted & ~lost
    bad = ~keep & ~lost
    return keep, {int(c): str(w) for c, w in zip(clients[bad], why[bad], strict=True)}


def finite_rows(params: torch.Tensor) -> torch.Tensor:
    """Per row, whether every value is finite. amax of |x| propagates NaN and keeps inf, and
    runs 10x faster than isfinite(x).all(dim=1)."""
    if params.shape[1] == 0:
        return torch.ones(len(params), dtype=torch.bool)
    return torch.isfinite(params.abs().amax(dim=1))


def usable_in_client_order(updates: Updates, keep: np.ndarray) -> Updates:
    """The kept updates sorted by client id: the aggregate sums them in one order whatever
    order the executor's replies arrived in (a float sum depends on its order)."""
    clients = updates.clients
    if keep.all() and (np.diff(clients) > 0).all():  # the usual round: no copy
        return updates
    rows = np.flatnonzero(keep)
    return updates.select(rows[np.argsort(clients[rows], kind="stable")])


def run_round(
    plan: RoundPlan,
    executor: Executor,
    round_: int,
    start: torch.Tensor,
    new_aggregation: Callable[[], Aggregation],
    clock: RoundClock | None = None,
) -> RoundOutcome:
    """Sample, inject failures, train and aggregate chunk by chunk; retry with a fresh sample
    and a fresh aggregation (the partial one is dropped) at most plan.max_retries times while
    fewer than plan.needed updates are usable. On a `clock`, each attempt trains the
    clients it plans (stragglers.py) and lasts its simulated seconds."""
    earlier: list[int] = []  # failed or rejected in an earlier attempt, in that order
    failed_before: dict[int, str | None] = {}  # ordered, each client once: why, if lost
    rejected_before: dict[int, str] = {}
    elapsed = 0.0
    for attempt in range(plan.max_retries + 1):
        sampled = sample_clients(
            plan.seed, round_, attempt, plan.clients, plan.clients_per_round, plan.poisson
        )
        failed = draw_failures(plan.seed, round_, attempt, sampled, plan.failure_rate)
        tried = Attempt(new_aggregation())
        work = None if clock is None else clock.plan(round_, sampled[~failed], clock.now + elapsed)
        training = sampled[~failed] if work is None else work.clients
        train_chunks(plan, executor, round_, start, training, tried, work)
        elapsed += 0.0 if work is None else work.seconds
        if tried.usable >= plan.needed:
            outcome = finish_round(sampled, sampled[failed], tried, attempt + 1, earlier)
            outcome.sim, outcome.sim_seconds = work, elapsed
            return outcome
        untrained = not_trained(work)
        earlier += [int(c) for c in sampled[failed]] + list(untrained)
        earlier += list(tried.lost) + list(tried.rejected)
        failed_before.update(dict.fromkeys(int(c) for c in sampled[failed]))
        failed_before.update(untrained)
        failed_before.update(tried.lost)
        rejected_before.update(tried.rejected)
    raise RoundFailed(failure_message(plan, round_, failed_before, rejected_before))


def not_trained(work: Work | None) -> dict[int, str]:
    """The clients an attempt on the clock left out, and why: unavailable, or dropped past
    the deadline."""
    if work is None:
        return {}
    out = dict.fromkeys((int(c) for c in work.unavailable), UNAVAILABLE)
    out.update(dict.fromkeys((int(c) for c in np.setdiff1d(work.late, work.clients)), LATE))
    return out


def train_chunks(
    plan, executor, round_, start, clients: np.ndarray, tried: Attempt, work: Work | None = None
) -> None:
    """Train `clients` (sorted) plan.chunk at a time and fold each chunk's usable updates
    into `tried`; one executor call even for no clients, as before chunking. A `work` with
    step budgets (partial work) hands each chunk's budgets to the executor."""
    steps = None if work is None else work.steps
    for lo in range(0, max(len(clients), 1), plan.chunk):
        budget = None if steps is None else steps[lo : lo + plan.chunk]
        train_chunk(executor, round_, start, clients[lo : lo + plan.chunk], tried, budget)


def train_chunk(executor, round_, start, clients: np.ndarray, tried: Attempt, steps=None) -> None:
    """One chunk; a function of its own so that its rows are freed before the next trains.
    `steps`: each client's local step budget, passed only when there is one."""
    if steps is None:
        updates = executor.train(round_, start, clients)
    else:
        updates = executor.train(round_, start, clients, steps=steps)
    keep, rejected = screen_updates(updates, start.numel())
    tried.add(usable_in_client_order(updates, keep), rejected, updates.lost)


def finish_round(sampled, injected, tried: Attempt, attempts: int, earlier) -> RoundOutcome:
    begin = time.perf_counter()
    aggregate = tried.aggregation.result()
    seconds = tried.seconds + time.perf_counter() - begin
    failed = np.union1d(injected, np.array(list(tried.lost), dtype=np.int64))
    return RoundOutcome(
        sampled, failed, tried.rejected, attempts, earlier, aggregate,
        np.concatenate(tried.clients), np.concatenate(tried.num_examples),
        np.concatenate(tried.losses), seconds,
    )  # fmt: skip


def failure_message(plan: RoundPlan, round_: int, failed: dict, rejected: dict) -> str:
    """One line: what was missing, which clients failed (why, when they were lost) and which
    were rejected and why."""
    failures = [f"{c} ({why})" if why else str(c) for c, why in sorted(failed.items())]
    reasons = [f"{c} ({why})" for c, why in sorted(rejected.items())]
    return (
        f"round {round_}: fewer than {plan.needed} usable client updates after "
        f"{plan.max_retries + 1} attempts (client failure rate {plan.failure_rate}); "
        f"failed clients: {listing(failures)}; rejected: {listing(reasons)}; "
        "lower the client failure rate or min_clients, or raise max_retries"
    )


def listing(items: list) -> str:
    """At most LISTED items, then how many more; 'none' for none."""
    if not items:
        return "none"
    shown = ", ".join(str(i) for i in items[:LISTED])
    return shown if len(items) <= LISTED else f"{shown} and {len(items) - LISTED} more"


def round_fields(outcome: RoundOutcome) -> dict:
    """The round event's client bookkeeping."""
    fields = {
        "clients": [int(c) for c in outcome.sampled],
        "failed": [int(c) for c in outcome.failed],
        "rejected": list(outcome.rejected),
        "attempts": outcome.attempts,
    }
    if outcome.retried_failed:
        fields["retried_failed"] = outcome.retried_failed
    if outcome.sim is not None:
        fields["updates"] = len(outcome.clients)
        fields["stragglers"] = [int(c) for c in outcome.sim.late]
        if len(outcome.sim.unavailable):
            fields["unavailable"] = [int(c) for c in outcome.sim.unavailable]
        fields["sim_round_seconds"] = round(outcome.sim_seconds, 6)
    return fields


def round_samples(outcome: RoundOutcome, plan: RoundPlan, clock: RoundClock | None) -> int:
    """Samples the round's usable clients trained on: their data times the local epochs,
    less what stragglers left undone at the deadline (partial work)."""
    if clock is None or outcome.sim is None or outcome.sim.steps is None:
        return int(outcome.num_examples.sum()) * plan.local_epochs
    return clock.samples_done(outcome.sim, outcome.clients)


@dataclass
class RoundState:
    """Where the round loop stands after a round: what a checkpoint keeps of it, and what a
    resumed loop starts from. Client sampling, failures and client training are drawn from
    generators keyed by (seed, round), so nothing else carries over between rounds."""

    rounds_done: int
    current: torch.Tensor
    server_state: dict
    executor_state: dict | None = None
    """What the executor keeps across rounds (compression's error feedback), if anything."""


def train_rounds(
    plan: RoundPlan,
    executor: Executor,
    new_aggregation: Callable[[], Aggregation],
    server_step: ServerStep,
    start: torch.Tensor,
    recorder,
    on_eval: Callable[[int, torch.Tensor], None],
    resumed: RoundState | None = None,
    on_round_end: Callable[[RoundState], None] | None = None,
    clock: RoundClock | None = None,
    round_fields_of: Callable[[int], dict] | None = None,
) -> torch.Tensor:
    """The round loop: returns the final global parameters. `new_aggregation()` gives each
    attempt at a round its own aggregation; `on_eval(round, global)` runs every
    plan.eval_every rounds (0 = every round) and after the last one; `on_round_end(state)`
    after each round and its evaluation (a checkpoint). `resumed` continues a loop after
    its checkpoint's round. On a `clock` (stragglers.py) every round event carries
    sim_seconds, the simulated time at its end; `round_fields_of(round)` adds the update
    seam's own figures (seam.py) to each round event."""
    server, current = ServerOptimizer(server_step), start.clone()
    every = plan.eval_every or 1
    first = 1
    if resumed is None:
        recorder.phase("train", total=plan.rounds, unit="round")
    else:
        current, server.state = resumed.current.clone(), resumed.server_state
        if resumed.executor_state is not None:
            executor.load_state_dict(resumed.executor_state)
        first = resumed.rounds_done + 1
    for round_ in range(first, plan.rounds + 1):
        begin = time.perf_counter()
        outcome = run_round(plan, executor, round_, current, new_aggregation, clock)
        combine = time.perf_counter()
        current = server.step(current, outcome.aggregate)
        step_seconds = time.perf_counter() - combine
        recorder.round(
            round_,
            loss=float(np.mean(outcome.losses)),
            samples=round_samples(outcome, plan, clock),
            duration=time.perf_counter() - begin,
            aggregate_seconds=round(outcome.aggregate_seconds + step_seconds, 6),
            sim_seconds=None if clock is None else clock.advance(outcome.sim_seconds),
            **round_fields(outcome),
            **({} if round_fields_of is None else round_fields_of(round_)),
        )
        if round_ % every == 0 or round_ == plan.rounds:
            on_eval(round_, current)
        if on_round_end is not None:
            on_round_end(RoundState(round_, current, server.state))
    recorder.phase("train_end", rounds=plan.rounds)
    return current


# --- a run's checkpoints of the round loop ------------------------------------------------------


def resumed_rounds(ctx: WorkerContext) -> RoundState | None:
    """The round loop's state from the checkpoint a resumed run starts from, else None."""
    state = ctx.restore({})
    if state is None:
        return None
    extra = state["extra"]
    return RoundState(
        state["at"], extra["current"], extra["server_state"], extra.get("executor_state")
    )


def after_round(ctx: WorkerContext, executor: Executor) -> Callable[[RoundState], None]:
    """on_round_end: the server's checkpoint when one is due (the global model, the server
    optimizer's state), after the executor's other ranks have written theirs; then the
    injected fault, if it is this round's (fault.step counts rounds here)."""

    def on_round_end(state: RoundState) -> None:
        done = state.rounds_done
        if ctx.checkpoint_due(done):
            if hasattr(executor, "checkpoint"):
                executor.checkpoint(done)
            extra = {"current": state.current, "server_state": state.server_state}
            kept = executor.state_dict() if hasattr(executor, "state_dict") else None
            if kept is not None:
                extra["executor_state"] = kept
            ctx.save_checkpoint(done, "round", {}, {"round": done}, extra)
        ctx.maybe_fault(done)

    return on_round_end
