"""The vectorized trainer's grouped layout: it reproduces sequential client training on conv
nets, and models it cannot serve fall back to vmap."""

import numpy as np
import pytest
import torch
from torch import nn

from distlab.config import OptimizerConfig
from distlab.federated.clients import LocalSpec, client_batches, train_client
from distlab.federated.vectorized import BatchedLinear, VectorTrainer
from distlab.models import build_model
from distlab.training import flat_params


def image_data(n=40, side=8, classes=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, side, side, generator=gen)
    return x, torch.randint(0, classes, (n,), generator=gen)


def assert_matches_sequential(model, x, y, opt, parts):
    """Train the parts' clients vectorized and one by one; final parameters and mean losses
    must agree."""
    start = flat_params(model).clone()
    spec = LocalSpec(opt, 4, 1)
    schedules = [client_batches(p, 4, 1, 0, 1, c) for c, p in enumerate(parts)]

    stacked, losses = VectorTrainer(model, spec, x, y).train(start, schedules)
    expected = [train_client(model, start, x, y, s, spec) for s in schedules]

    for row, (params, _) in zip(stacked, expected, strict=True):
        assert torch.allclose(row, params, atol=1e-5)
    assert losses == pytest.approx([np.mean(s) for _, s in expected], abs=1e-5)


@pytest.mark.parametrize("name", ["lenet", "mlp"])
@pytest.mark.parametrize(
    "opt", [OptimizerConfig(lr=0.1), OptimizerConfig(lr=0.1, momentum=0.9, weight_decay=0.01)]
)
def test_grouped_layout_matches_sequential_with_uneven_clients(name, opt):
    x, y = image_data()
    model = build_model(name, (1, 8, 8), 4, seed=0)
    # 10, 6 and 3 samples: 3, 2 and 1 steps, the last batches short
    parts = [np.arange(0, 10), np.arange(10, 16), np.arange(20, 23)]

    assert VectorTrainer(model, LocalSpec(opt, 4, 1), x, y).twin is not None
    assert_matches_sequential(model, x, y, opt, parts)


@pytest.mark.parametrize(
    "opt", [OptimizerConfig(name="adam", lr=0.01), OptimizerConfig(lr=0.1, momentum=0.9)]
)
def test_adam_and_fedprox_match_sequential_on_lenet(opt):
    x, y = image_data()
    model = build_model("lenet", (1, 8, 8), 4, seed=0)
    parts = [np.arange(0, 10), np.arange(10, 16), np.arange(20, 23)]
    start = flat_params(model).clone()
    spec = LocalSpec(opt, 4, 2, mu=0.5)  # two epochs: the leaves serve every step of both
    schedules = [client_batches(p, 4, 2, 0, 1, c) for c, p in enumerate(parts)]

    stacked, losses = VectorTrainer(model, spec, x, y).train(start, schedules)

    # Adam divides by the root of the second moment: where a gradient is near zero, the last
    # bit of its sum (grouped against plain kernels, whose order differs between CPUs) grows
    # to a few 1e-5 in the weight after 8 steps (3.6e-5 in one of 19,244 on an AMD EPYC).
    atol = 1e-4 if opt.name == "adam" else 1e-5
    for row, schedule in zip(stacked, schedules, strict=True):
        params, _ = train_client(model, start, x, y, schedule, spec)
        assert torch.allclose(row, params, atol=atol)
    assert np.isfinite(losses).all()


def test_batched_linear_gives_autograd_gradients_laid_out_like_the_weight():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, generator=gen, requires_grad=True)  # (clients, B, in)
    weight = torch.randn(3, 4, 7, generator=gen, requires_grad=True)  # (clients, out, in)
    bias = torch.randn(3, 4, generator=gen, requires_grad=True)
    upstream = torch.randn(3, 5, 4, generator=gen)

    ours = torch.autograd.grad(BatchedLinear.apply(x, weight, bias), (x, weight, bias), upstream)
    plain = x @ weight.transpose(1, 2) + bias.unsqueeze(1)
    expected = torch.autograd.grad(plain, (x, weight, bias), upstream)

    for got, want in zip(ours, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    assert ours[1].is_contiguous()


def test_grouped_inputs_are_each_step_s_samples_channels_last():
    x, y = image_data()
    model = build_model("lenet", (1, 8, 8), 4, seed=0)
    trainer = VectorTrainer(model, LocalSpec(OptimizerConfig(lr=0.1), 4, 1), x, y)
    index = np.random.default_rng(0).integers(0, len(x), size=(2, 3, 4))  # steps, clients, B

    grouped = trainer.grouped_inputs(index)

    assert grouped.shape == (2, 4, 3, 8, 8)  # steps, B, clients * C, H, W
    assert grouped[1].is_contiguous(memory_format=torch.channels_last)
    for t in range(2):
        for c in range(3):
            assert torch.equal(grouped[t, :, c], x[index[t, c], 0])


class Flipped(nn.Module):
    """Reverses the feature order first: in the grouped layout that would also reverse the
    clients, so the trainer must notice and use vmap."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1).flip(1))


class Reshaped(Flipped):
    """Flattens the batch by hand: in the grouped layout the clients' features would be
    split across rows, which the grouped linear layer refuses."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(-1, 64))


class Squashed(nn.Module):
    """A layer (Tanh) the grouped layout does not list."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("cls", [Flipped, Reshaped, Squashed])
def test_models_outside_the_grouped_layout_fall_back_to_vmap(cls):
    x, y = image_data()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = cls()
    opt = OptimizerConfig(lr=0.1)

    assert VectorTrainer(model, LocalSpec(opt, 4, 1), x, y).twin is None
    assert_matches_sequential(model, x, y, opt, [np.arange(0, 8), np.arange(8, 13)])
