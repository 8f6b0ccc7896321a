"""Tests of the shared training pieces on tiny hand-made models and data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from distlab.config import OptimizerConfig
from distlab.federated.clients import LocalSpec, train_client
from distlab.training import (
    compute_gradients,
    evaluate,
    flat_grads,
    flat_params,
    make_optimizer,
    set_flat_grads,
    set_flat_params,
)


def identity_model(classes: int) -> nn.Module:
    """Logits = inputs, so the test data decides every prediction."""
    model = nn.Linear(classes, classes, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(classes))
    return model


def zero_model(features: int, classes: int) -> nn.Module:
    model = nn.Linear(features, classes, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    return model


# ---------------------------------------------------------------- evaluate


def eval_data() -> tuple[torch.Tensor, torch.Tensor]:
    # Logit ln 3 on the predicted class, 0 on the other 3: softmax gives 3/6 there, 1/6 elsewhere.
    predicted = torch.tensor([0, 1, 2, 0, 1])
    x = torch.zeros(5, 4)
    x[torch.arange(5), predicted] = math.log(3)
    y = torch.tensor([0, 1, 1, 2, 1])
    return x, y


def test_evaluate_matches_hand_worked_numbers():
    x, y = eval_data()

    result = evaluate(identity_model(4), x, y, classes=4, batch_size=2)

    # hits: samples 0, 1, 4. Loss: -log(1/2) on hits, -log(1/6) on misses.
    assert result.accuracy == pytest.approx(3 / 5)
    assert result.loss == pytest.approx((3 * math.log(2) + 2 * math.log(6)) / 5)
    # class 0: 1 of 1; class 1: 2 of 3; class 2: 0 of 1; class 3 absent: 0
    assert result.per_class == [1.0, 0.6667, 0.0, 0.0]


def test_evaluate_batch_size_does_not_change_the_result():
    x, y = eval_data()
    model = identity_model(4)

    whole, pieces = evaluate(model, x, y, 4), evaluate(model, x, y, 4, batch_size=1)

    assert whole.accuracy == pieces.accuracy and whole.per_class == pieces.per_class
    assert whole.loss == pytest.approx(pieces.loss)


def test_evaluate_restores_training_mode():
    x, y = eval_data()
    model = identity_model(4)
    model.train()

    evaluate(model, x, y, 4)

    assert model.training


def test_evaluate_scores_a_dropout_model_in_eval_mode_and_leaves_eval_mode_alone():
    x = torch.randn(600, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 4, (600,), generator=torch.Generator().manual_seed(1))
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    with torch.no_grad():
        logits = model.eval()(x)
    expected = (logits.argmax(1) == y).float().mean().item()

    model.train()
    in_training = evaluate(model, x, y, 4)  # more than one batch of the default size
    model.eval()
    in_eval = evaluate(model, x, y, 4)

    assert in_training.accuracy == pytest.approx(expected) == in_eval.accuracy
    assert in_training.loss == pytest.approx(in_eval.loss)
    assert not model.training and not model[1].training


# ---------------------------------------------------------------- optimizer and steps


def test_make_optimizer_sgd_with_momentum_and_weight_decay():
    params = list(nn.Linear(2, 2).parameters())
    cfg = OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)

    opt = make_optimizer(params, cfg)

    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.9, 1e-4)
    assert group["params"] == params


def test_make_optimizer_adam():
    cfg = OptimizerConfig(name="adam", lr=0.001, weight_decay=0.01)

    opt = make_optimizer(nn.Linear(2, 2).parameters(), cfg)

    assert isinstance(opt, torch.optim.Adam)
    assert (opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]) == (0.001, 0.01)


def test_one_local_step_is_a_hand_worked_sgd_step():
    # Zero weights: softmax (1/2, 1/2), loss ln 2, dloss/dlogits = (1/2 - 1, 1/2) for label 0,
    # so the weight gradient is x * (-1/2, 1/2) and SGD moves by -lr times that.
    model = zero_model(1, 2)
    spec = LocalSpec(OptimizerConfig(lr=0.1), batch=1, epochs=1)

    params, losses = train_client(
        model, torch.zeros(2), torch.tensor([[2.0]]), torch.tensor([0]), [np.array([0])], spec
    )

    assert losses == [pytest.approx(math.log(2))]
    assert torch.allclose(params, torch.tensor([0.1, -0.1]))


def test_compute_gradients_replaces_old_gradients():
    model = zero_model(1, 2)
    x, y = torch.tensor([[2.0]]), torch.tensor([0])

    compute_gradients(model, x, y)
    compute_gradients(model, x, y)

    assert torch.allclose(model.weight.grad, torch.tensor([[-1.0], [1.0]]))


def test_local_training_walks_the_given_batches():
    model = zero_model(1, 2)
    spec = LocalSpec(OptimizerConfig(lr=0.1), batch=2, epochs=1)
    x, y = torch.tensor([[2.0], [2.0], [2.0]]), torch.tensor([0, 0, 0])

    _, losses = train_client(model, torch.zeros(2), x, y, [np.array([0, 1]), np.array([2])], spec)

    assert len(losses) == 2 and losses[0] == pytest.approx(math.log(2))
    assert losses[1] < losses[0]


# ---------------------------------------------------------------- flat buffers


def test_flat_grads_round_trip():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    compute_gradients_any(model)
    flat = flat_grads(model)

    set_flat_grads(model, flat * 2)

    assert flat.numel() == 3 * 2 + 2 + 2 * 1 + 1
    assert torch.equal(flat_grads(model), flat * 2)


def test_set_flat_grads_fills_a_model_that_never_ran_backward():
    model = nn.Linear(2, 2)
    values = torch.arange(6, dtype=torch.float32)

    set_flat_grads(model, values)

    assert torch.equal(model.weight.grad, torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    assert torch.equal(model.bias.grad, torch.tensor([4.0, 5.0]))


def test_flat_params_round_trip():
    model = nn.Linear(2, 2)
    values = torch.arange(6, dtype=torch.float32)

    set_flat_params(model, values)

    assert torch.equal(flat_params(model), values)
    assert torch.equal(model.bias, torch.tensor([4.0, 5.0]))


def compute_gradients_any(model: nn.Module) -> None:
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    model(x).sum().backward()
