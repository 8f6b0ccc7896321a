"""The round loop in chunks: a round trains and aggregates plan.chunk clients at a time, on a
real executor (clients train with torch, one after another), against the same round in one
chunk: same sampled clients, same bookkeeping, an aggregate equal up to float rounding."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from distlab.config import OptimizerConfig, validate_config
from distlab.data.partition import partition
from distlab.federated.clients import LocalSpec, split_clients
from distlab.federated.sequential import SequentialExecutor
from distlab.federated.server import RoundPlan, run_round
from distlab.federated.types import Updates
from distlab.models import build_model
from distlab.strategies.aggregate import Collected, StreamingMean, median, weighted_mean
from distlab.training import flat_params

CLIENTS = 10


class Recording:
    """A real executor seen from the server: records each call's clients, hands the rows
    back in reverse order (as replies may arrive), and makes `poisoned` clients' rows NaN."""

    def __init__(self, poisoned=()) -> None:
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(200, 5, generator=gen), torch.randint(0, 3, (200,), generator=gen)
        parts = partition(y.numpy(), CLIENTS, validate_config({}).partition, seed=0)
        data = split_clients(parts.indices, 0.0, seed=0)
        self.model = build_model("logreg", (5,), 3, seed=0)
        self.start = flat_params(self.model).clone()  # the executor trains on self.model
        spec = LocalSpec(OptimizerConfig(lr=0.1), 8, 1)
        self.inner = SequentialExecutor(self.model, data, spec, x, y, seed=0)
        self.poisoned, self.calls = set(poisoned), []

    def train(self, round_, start, clients) -> Updates:
        self.calls.append(clients.tolist())
        updates = self.inner.train(round_, start, clients)
        for row, client in enumerate(updates.clients.tolist()):
            if client in self.poisoned:
                updates.params[row] = float("nan")
        return updates.select(np.arange(len(clients))[::-1])

    def close(self) -> None:
        pass


PLAN = RoundPlan(rounds=1, clients=CLIENTS, clients_per_round=8, seed=3)


def one_round(plan, executor=None, aggregation=StreamingMean):
    executor = executor or Recording()
    return run_round(plan, executor, 1, executor.start, aggregation), executor


def bookkeeping(outcome):
    return (outcome.sampled.tolist(), outcome.failed.tolist(), outcome.rejected,
            outcome.attempts, outcome.retried_failed, outcome.clients.tolist(),
            outcome.num_examples.tolist(), outcome.losses.tolist())  # fmt: skip


def test_chunks_train_in_client_order_and_aggregate_as_one_chunk_does():
    whole, _ = one_round(PLAN)
    chunked, executor = one_round(replace(PLAN, chunk=3))

    sampled = whole.sampled.tolist()
    assert executor.calls == [sampled[:3], sampled[3:6], sampled[6:]]
    assert bookkeeping(chunked) == bookkeeping(whole)
    assert chunked.clients.tolist() == sorted(sampled)  # replies came reversed
    assert torch.allclose(chunked.aggregate, whole.aggregate, rtol=1e-6, atol=1e-7)


def test_one_chunk_is_the_one_shot_weighted_mean_bit_for_bit():
    outcome, executor = one_round(PLAN)
    rows = executor.inner.train(1, executor.start, outcome.clients)

    assert executor.calls == [outcome.sampled.tolist()]
    assert torch.equal(outcome.aggregate, weighted_mean(rows.params, rows.num_examples))


def test_a_rejected_client_in_the_second_chunk_is_left_out():
    whole, _ = one_round(PLAN)
    bad = int(whole.sampled[4])  # in the second chunk of 3

    outcome, executor = one_round(replace(PLAN, chunk=3), Recording(poisoned=[bad]))
    usable = [c for c in whole.sampled.tolist() if c != bad]
    rows = executor.inner.train(1, executor.start, np.array(usable))

    assert outcome.rejected == {bad: "NaN/Inf"}
    assert outcome.clients.tolist() == usable
    expected = weighted_mean(rows.params, rows.num_examples)
    assert torch.allclose(outcome.aggregate, expected, rtol=1e-6, atol=1e-7)


def test_a_retried_round_drops_its_partial_aggregate():
    # seed 5 at rate 0.3 fails 2, 3 and 1 of the 8 sampled in attempts 1, 2 and 3
    plan = replace(PLAN, seed=5, failure_rate=0.3, needed=7)

    whole, _ = one_round(plan)
    chunked, executor = one_round(replace(plan, chunk=3))
    final = executor.inner.train(1, executor.start, chunked.clients)

    assert chunked.attempts == 3 and len(chunked.retried_failed) == 5
    assert bookkeeping(chunked) == bookkeeping(whole)
    assert [len(c) for c in executor.calls] == [3, 3, 3, 2, 3, 3, 1]
    expected = weighted_mean(final.params, final.num_examples)
    assert torch.allclose(chunked.aggregate, expected, rtol=1e-6, atol=1e-7)


def test_a_rule_that_needs_every_update_sees_them_all_in_client_order():
    def collect_median():
        return Collected(lambda updates, counts: median(updates, counts))

    whole, _ = one_round(PLAN, aggregation=collect_median)
    chunked, _ = one_round(replace(PLAN, chunk=3), aggregation=collect_median)

    assert torch.equal(chunked.aggregate, whole.aggregate)


def test_a_chunk_below_one_is_refused():
    with pytest.raises(ValueError, match=r"chunk must be >= 1 \(got 0\)"):
        RoundPlan(rounds=1, clients=4, clients_per_round=4, chunk=0)
    with pytest.raises(ValueError, match="aggregate_chunk"):
        validate_config({"strategy": {"name": "fedavg", "aggregate_chunk": 0}})
