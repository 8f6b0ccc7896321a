"""Federated building blocks: sampling, failures, screening, server optimizers, client
training (sequential and vectorized agree, FedProx's term by hand), the round loop's
contract with executors and strategies."""

from typing import get_args

import numpy as np
import pytest
import torch

from distlab.config import OptimizerConfig
from distlab.federated.clients import (
    LocalSpec,
    client_batches,
    local_steps,
    split_clients,
    train_client,
)
from distlab.federated.executors import EXECUTORS
from distlab.federated.optimizers import SERVER_OPTIMIZERS, ServerOptimizer, ServerOptions
from distlab.federated.processes import client_hosts
from distlab.federated.server import (
    RoundFailed,
    RoundPlan,
    draw_failures,
    round_fields,
    run_round,
    sample_clients,
    screen_updates,
    usable_in_client_order,
)
from distlab.federated.types import Layout, Updates
from distlab.federated.vectorized import VectorTrainer, pad_schedules
from distlab.models import build_model
from distlab.strategies.aggregate import AGGREGATORS, StreamingMean
from distlab.strategies.fedavg import SERVER_OPTIMIZER, Params, make_server_step
from distlab.training import flat_params


def tiny_data(n=60, features=5, classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=gen), torch.randint(0, classes, (n,), generator=gen)


def test_sampling_is_seeded_distinct_and_sorted():
    a = sample_clients(seed=1, round_=3, attempt=0, clients=100, per_round=10)
    b = sample_clients(seed=1, round_=3, attempt=0, clients=100, per_round=10)
    c = sample_clients(seed=1, round_=4, attempt=0, clients=100, per_round=10)

    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()
    assert len(set(a.tolist())) == 10 and a.tolist() == sorted(a.tolist())


def test_failure_rate_zero_fails_nobody_and_rate_draws_are_seeded():
    sampled = np.arange(1000)

    none = draw_failures(0, 1, 0, sampled, 0.0)
    some = draw_failures(0, 1, 0, sampled, 0.3)

    assert not none.any()
    assert 0.25 < some.mean() < 0.35
    assert (some == draw_failures(0, 1, 0, sampled, 0.3)).all()


def test_screen_rejects_non_finite_and_wrong_shape():
    params = torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [0.0, float("inf")], [3.0, 4.0]])
    clients, counts = np.array([5, 6, 7, 8]), np.array([1, 1, 1, 1])
    updates = Updates(clients, params, counts, {"loss": np.zeros(4)})

    keep, rejected = screen_updates(updates, size=2)
    keep_wrong, rejected_wrong = screen_updates(updates, size=3)

    assert keep.tolist() == [True, False, False, True]
    assert rejected == {6: "NaN/Inf", 7: "NaN/Inf"}
    assert not keep_wrong.any() and list(rejected_wrong) == [5, 6, 7, 8]
    assert set(rejected_wrong.values()) == {"wrong shape"}


def test_fedavgm_accumulates_server_momentum_by_hand():
    p = Params(algorithm="fedavgm", server_lr=1.0, server_momentum=0.5)
    opt = ServerOptimizer(make_server_step(p))
    w = torch.tensor([0.0])

    w1 = opt.step(w, torch.tensor([1.0]))  # v = 1, w = 1
    w2 = opt.step(w1, torch.tensor([2.0]))  # delta 1, v = 0.5 * 1 + 1 = 1.5, w = 2.5

    assert w1.tolist() == [1.0] and w2.tolist() == [2.5]


def test_fedadam_first_step_by_hand():
    p = Params(algorithm="fedadam", server_lr=0.1, beta1=0.9, beta2=0.99, tau=0.2)
    opt = ServerOptimizer(make_server_step(p))

    w1 = opt.step(torch.tensor([0.0]), torch.tensor([2.0]))

    # delta 2: m = 0.1 * 2 = 0.2, v = 0.01 * 4 = 0.04, step = 0.2 / (0.2 + 0.2) = 0.5
    assert w1.tolist() == pytest.approx([0.05])


def test_fedadagrad_sums_squared_steps_by_hand():
    opt = ServerOptimizer(make_server_step(Params(algorithm="fedadagrad", server_lr=0.1, tau=0.2)))

    w1 = opt.step(torch.tensor([0.0]), torch.tensor([2.0]))
    w2 = opt.step(w1, w1 + 1.0)

    # delta 2: m = 0.1 * 2 = 0.2, v = 0 + 4 = 4, w1 = 0.1 * 0.2 / (2 + 0.2) = 1/110
    # delta 1: m = 0.9 * 0.2 + 0.1 * 1 = 0.28, v = 4 + 1 = 5, w2 = w1 + 0.028 / (sqrt 5 + 0.2)
    assert w1.tolist() == pytest.approx([1 / 110])
    assert w2.tolist() == pytest.approx([1 / 110 + 0.028 / (5**0.5 + 0.2)], rel=1e-6)


def test_fedyogi_moves_v_by_a_fixed_fraction_of_the_squared_step():
    yogi, options = SERVER_OPTIMIZERS["yogi"], ServerOptions(lr=0.1, beta2=0.99, tau=0.2)
    state = {"m": torch.tensor([0.2]), "v": torch.tensor([0.04])}

    up, up_state = yogi(torch.tensor([0.0]), torch.tensor([1.0]), state, options)
    _, down_state = yogi(torch.tensor([0.0]), torch.tensor([0.1]), up_state, options)

    # delta 1, v < delta^2: v = 0.04 + 0.01 * 1 = 0.05 (Adam: 0.99 * 0.04 + 0.01 = 0.0496)
    # m = 0.9 * 0.2 + 0.1 = 0.28; w = 0.1 * 0.28 / (sqrt 0.05 + 0.2)
    assert up_state["v"].tolist() == pytest.approx([0.05])
    assert up.tolist() == pytest.approx([0.028 / (0.05**0.5 + 0.2)], rel=1e-6)
    # delta 0.1, v > delta^2: v = 0.05 - 0.01 * 0.01 = 0.0499
    assert down_state["v"].tolist() == pytest.approx([0.0499])
    assert state["v"].tolist() == pytest.approx([0.04])  # the step left its input alone


def test_fedavg_tables_cover_exactly_the_names_params_accept():
    fields = Params.model_fields

    assert set(get_args(fields["executor"].annotation)) == {"auto", *EXECUTORS}
    assert set(get_args(fields["aggregator"].annotation)) == set(AGGREGATORS)
    assert set(get_args(fields["algorithm"].annotation)) == set(SERVER_OPTIMIZER)
    assert set(SERVER_OPTIMIZER.values()) == set(SERVER_OPTIMIZERS)


def test_updates_from_named_arrays_mark_replies_that_do_not_fit():
    layout = Layout(("w", "b"), ((2, 2), (2,)))
    good = {"w": np.arange(4.0).reshape(2, 2), "b": np.array([7.0, 8.0])}
    bad = {"w": np.zeros((2, 3)), "b": np.zeros(2)}

    updates = Updates.from_named([3, 9], [good, bad], [5, 6], {"loss": [0.5, 0.25]}, layout)

    assert updates.params[0].tolist() == [0.0, 1.0, 2.0, 3.0, 7.0, 8.0]
    assert updates.named(0)["b"].tolist() == [7.0, 8.0]
    assert updates.malformed.tolist() == [False, True]
    assert screen_updates(updates, 6)[1] == {9: "wrong shape"}


def test_lost_clients_are_left_out_but_not_rejected():
    layout = Layout(("w",), ((2,),))
    good = {"w": np.array([1.0, 2.0])}
    lost = {9: "lost: no reply within 5 s"}

    updates = Updates.from_named([3, 9], [good, None], [4, 0], {"loss": [0.5, np.nan]}, layout,
                                 lost)  # fmt: skip
    keep, rejected = screen_updates(updates, 2)

    assert keep.tolist() == [True, False]
    assert rejected == {}  # rejected is for replies that came and were unusable
    assert updates.select(np.array([1])).lost == lost
    assert updates.select(np.array([0])).lost == {}


class LosingExecutor:
    """Clients in `gone` never reply (a killed node); the others send ones, client 1 NaN."""

    def __init__(self, gone: set[int]):
        self.layout, self.gone = Layout(("w",), ((2,),)), gone

    def train(self, round_, start, clients):
        replies = [None if c in self.gone else {"w": np.ones(2) * (np.nan if c == 1 else 1)}
                   for c in clients.tolist()]  # fmt: skip
        lost = {c: "lost: no reply within 5 s" for c in clients.tolist() if c in self.gone}
        sizes = [0 if c in self.gone else 1 for c in clients.tolist()]
        return Updates.from_named(clients, replies, sizes, {"loss": [1.0] * len(clients)},
                                  self.layout, lost)  # fmt: skip

    def close(self) -> None:
        pass


def test_a_lost_client_fails_its_round_and_a_nan_update_is_rejected():
    plan = RoundPlan(rounds=1, clients=4, clients_per_round=4, needed=2)

    outcome = run_round(plan, LosingExecutor({3}), 1, torch.zeros(2), StreamingMean)

    assert outcome.failed.tolist() == [3]
    assert outcome.rejected == {1: "NaN/Inf"}
    assert outcome.clients.tolist() == [0, 2]
    assert round_fields(outcome)["failed"] == [3] and round_fields(outcome)["rejected"] == [1]


def test_a_round_without_enough_replies_names_the_lost_clients_as_failed():
    plan = RoundPlan(rounds=1, clients=4, clients_per_round=4, needed=3, max_retries=0)

    with pytest.raises(RoundFailed) as failure:
        run_round(plan, LosingExecutor({2, 3}), 1, torch.zeros(2), StreamingMean)

    assert ("failed clients: 2 (lost: no reply within 5 s), 3 (lost: no reply within 5 s); "
            "rejected: 1 (NaN/Inf);") in str(failure.value)  # fmt: skip


def test_usable_updates_are_sorted_by_client_for_one_summation_order():
    params = torch.tensor([[7.0], [3.0], [5.0]])
    updates = Updates(np.array([7, 3, 5]), params, np.array([1, 2, 3]), {"loss": np.zeros(3)})

    kept = usable_in_client_order(updates, np.array([True, False, True]))

    assert kept.clients.tolist() == [5, 7]
    assert kept.params.flatten().tolist() == [5.0, 7.0]
    assert kept.num_examples.tolist() == [3, 1]


class NamedArrayExecutor:
    """A transport that hands back named arrays, as a Flower or a serial-line executor
    would: client 1 replies with a wrong shape, client 2 with NaN, the others with `start`."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def train(self, round_, start, clients):
        replies = []
        for client in clients.tolist():
            reply = {k: v.clone() for k, v in self.layout.split(start).items()}
            if client == 1:
                reply["w"] = torch.zeros(3)
            if client == 2:
                reply["w"] = torch.full((2,), float("nan"))
            replies.append(reply)
        ones = [1] * len(clients)
        return Updates.from_named(clients, replies, ones, {"loss": ones}, self.layout)

    def close(self) -> None:
        pass


def test_round_failed_names_failed_and_rejected_clients():
    executor = NamedArrayExecutor(Layout(("w",), ((2,),)))
    # seed 4 at rate 0.3 fails clients 2, 5 in attempt 1 and 3, 5 in attempt 2
    plan = RoundPlan(
        rounds=1, clients=6, clients_per_round=6, seed=4, needed=6, max_retries=1, failure_rate=0.3
    )

    with pytest.raises(RoundFailed) as failure:
        run_round(plan, executor, 1, torch.zeros(2), StreamingMean)

    message = str(failure.value)
    assert "fewer than 6 usable client updates after 2 attempts" in message
    assert "failed clients: 2, 3, 5; rejected: 1 (wrong shape), 2 (NaN/Inf);" in message


def test_round_plan_rejects_more_needed_updates_than_sampled_clients():
    with pytest.raises(ValueError, match=r"needed <= clients_per_round .*\(got 5, 4, 10\)"):
        RoundPlan(rounds=1, clients=10, clients_per_round=4, needed=5)


def test_split_clients_holds_out_a_fraction_and_keeps_every_sample():
    parts = [np.arange(0, 10), np.arange(10, 13)]

    data = split_clients(parts, 0.3, seed=0)

    assert [len(t) for t in data.test] == [3, 0]
    assert [len(t) for t in data.train] == [7, 3]
    joined = np.sort(np.concatenate(data.train + data.test))
    assert joined.tolist() == list(range(13))


def test_client_batches_cover_each_epoch_once():
    idx = np.arange(100, 107)

    batches = client_batches(idx, 3, 2, seed=0, round_=1, client=4)

    assert [len(b) for b in batches] == [3, 3, 1, 3, 3, 1]
    assert sorted(np.concatenate(batches[:3]).tolist()) == idx.tolist()
    assert local_steps(7, 3, 2) == 6 and local_steps(7, None, 2) == 2


def test_client_hosts_are_contiguous_blocks():
    assert client_hosts(5, 2).tolist() == [1, 1, 1, 2, 2]


def test_pad_schedules_masks_padding_and_finished_clients():
    index, weight = pad_schedules([[np.array([4, 5])], [np.array([7]), np.array([8])]])

    assert index.shape == (2, 2, 2)
    assert weight[0].tolist() == [[0.5, 0.5], [1.0, 0.0]]
    assert weight[1].tolist() == [[0.0, 0.0], [1.0, 0.0]]


def test_fedprox_term_changes_the_second_step_by_lr_mu_times_drift():
    x, y = tiny_data()
    model = build_model("logreg", (5,), 3, seed=0)
    start = flat_params(model).clone()
    batches = [np.arange(0, 10), np.arange(10, 20)]
    opt = OptimizerConfig(lr=0.1)

    one, _ = train_client(model, start, x, y, batches[:1], LocalSpec(opt, 10, 1))
    plain, _ = train_client(model, start, x, y, batches, LocalSpec(opt, 10, 1))
    prox, _ = train_client(model, start, x, y, batches, LocalSpec(opt, 10, 1, mu=0.5))

    # step 1 is the same (w = w_global); step 2 adds lr * mu * (w1 - w0) to the descent
    expected = plain - 0.1 * 0.5 * (one - start)
    assert torch.allclose(prox, expected, atol=1e-6)


@pytest.mark.parametrize(
    "opt,mu",
    [
        (OptimizerConfig(lr=0.1, momentum=0.9, weight_decay=0.01), 0.0),
        (OptimizerConfig(lr=0.1), 0.3),
        (OptimizerConfig(name="adam", lr=0.01, weight_decay=0.01), 0.0),
    ],
)
def test_vectorized_training_matches_sequential_with_uneven_clients(opt, mu):
    x, y = tiny_data()
    model = build_model("logreg", (5,), 3, seed=0)
    start = flat_params(model).clone()
    spec = LocalSpec(opt, 4, 2, mu)
    # 9, 5 and 2 samples: 3, 2 and 1 steps per epoch, the last batches short
    parts = [np.arange(0, 9), np.arange(20, 25), np.arange(40, 42)]
    schedules = [client_batches(p, 4, 2, 0, 1, c) for c, p in enumerate(parts)]

    stacked, losses = VectorTrainer(model, spec, x, y).train(start, schedules)
    expected = [train_client(model, start, x, y, s, spec) for s in schedules]

    for row, (params, _) in zip(stacked, expected, strict=True):
        assert torch.allclose(row, params, atol=1e-5)
    assert losses == pytest.approx([np.mean(s) for _, s in expected], abs=1e-5)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"strategy": {"clients": 4, "clients_per_round": 5}}, "clients_per_round"),
        ({"workers": 5, "strategy": {"clients": 4}}, "--workers"),
        ({"workers": 2, "strategy": {"executor": "vectorized"}}, "executor vectorized"),
        ({"strategy": {"algorithm": "fedsgd", "local_epochs": 2}}, "fedsgd"),
        ({"strategy": {"mu": 0.1}}, "fedprox only"),
        ({"strategy": {"aggregator": "krum", "krum_f": 4}}, "krum"),
        ({"strategy": {"finetune": 3}}, "local_test_fraction"),
    ],
)
def test_check_rejects_inconsistent_settings(overrides, message):
    from distlab.config import validate_config

    strategy = {"name": "fedavg", **overrides.pop("strategy", {})}

    with pytest.raises(ValueError, match=message):
        validate_config({"strategy": strategy, **overrides})
