"""Personalization's pieces on their own: the FedPer head's size, the label prior's shift,
fine-tuning a copy, and the rules of the personal keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from distlab.config import OptimizerConfig
from distlab.federated.clients import LocalSpec
from distlab.federated.personalization import Shifted, check_personal, finetune_copy, head_size
from distlab.models import build_model
from distlab.strategies.gossip import Params


def test_head_size_is_the_last_layers_weights_and_bias():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))

    assert head_size(model) == 3 * 2 + 2


def test_head_size_refuses_a_head_that_shares_weights_with_an_earlier_layer():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight = model[0].weight  # tied: the head's weight is not at the vector's tail

    with pytest.raises(ValueError, match="last layer comes last"):
        head_size(model)


def test_shifted_adds_the_prior_to_every_row_of_logits():
    model = nn.Linear(2, 3)
    shift = torch.tensor([1.0, -2.0, 0.5])
    x = torch.randn(4, 2)

    assert torch.equal(Shifted(model, shift)(x), model(x) + shift)


def test_finetune_copy_moves_the_copy_and_leaves_the_start_alone():
    start = build_model("mlp", (1, 8, 8), 10, seed=0)
    before = [p.detach().clone() for p in start.parameters()]
    scratch = build_model("mlp", (1, 8, 8), 10, seed=1)
    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,))
    spec = LocalSpec(OptimizerConfig(), 8, 1)

    tuned = finetune_copy(scratch, start, np.arange(40), x, y, spec, 3, 0, 0)

    assert tuned is scratch
    assert all(torch.equal(a, b) for a, b in zip(before, start.parameters(), strict=True))
    assert not all(
        torch.equal(a, b) for a, b in zip(start.parameters(), tuned.parameters(), strict=True)
    )


def test_a_label_prior_on_a_model_trained_on_own_labels_is_refused_naming_the_setting():
    p = Params(personalized=True, label_prior=True, topology="none")

    with pytest.raises(ValueError, match="drop topology none"):
        check_personal(p, {"topology none": True})


def test_personal_keys_need_a_personalized_run():
    with pytest.raises(ValueError, match="strategy.finetune applies to personalized runs"):
        check_personal(Params(finetune=2), {})
