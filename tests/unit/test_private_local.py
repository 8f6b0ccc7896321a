"""Client-level DP-SGD in local training: the vectorized executor's per-sample rule for all
clients at once equals the sequential one, client by client; clipping bounds each sample's
influence; the noise is the client's own seeded draw."""

import numpy as np
import pytest
import torch

from distlab.config import OptimizerConfig
from distlab.federated.clients import LocalSpec, client_batches, train_client
from distlab.federated.private_local import LocalPrivacy, noise_generator, private_grads
from distlab.federated.vectorized import VectorTrainer
from distlab.models import build_model
from distlab.training import flat_params


def image_data(n=40, side=8, classes=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, side, side, generator=gen)
    return x, torch.randint(0, classes, (n,), generator=gen)


@pytest.mark.parametrize("name", ["lenet", "mlp", "logreg"])
def test_vectorized_dpsgd_equals_sequential(name):
    x, y = image_data()
    model = build_model(name, (1, 8, 8), 4, seed=0)
    opt = OptimizerConfig(lr=0.1, momentum=0.9)
    spec = LocalSpec(opt, 4, 1, dp=LocalPrivacy(clip=0.5, noise=1.0))
    # 10, 6 and 3 samples: 3, 2 and 1 steps, the last batches short
    parts = [np.arange(0, 10), np.arange(10, 16), np.arange(20, 23)]
    start = flat_params(model).clone()
    schedules = [client_batches(p, 4, 1, 0, 3, c) for c, p in enumerate(parts)]
    gens = [noise_generator(0, 3, c) for c in range(3)]

    stacked, losses = VectorTrainer(model, spec, x, y).train(start, schedules, gens)
    expected = [
        train_client(model, start, x, y, s, spec, noise_generator(0, 3, c))
        for c, s in enumerate(schedules)
    ]

    for row, (params, _) in zip(stacked, expected, strict=True):
        assert torch.allclose(row, params, atol=1e-5)
        assert not torch.equal(row, start)
    assert losses == pytest.approx([np.mean(s) for _, s in expected], abs=1e-5)


def test_clipping_bounds_each_sample_and_noise_is_the_clients_own():
    x, y = image_data(n=8)
    model = build_model("mlp", (1, 8, 8), 4, seed=0)
    params = {n: 100 * p.detach().unsqueeze(0) for n, p in model.named_parameters()}

    def mean_grad(noise, seed, samples=slice(None)):
        dp = LocalPrivacy(clip=0.1, noise=noise)
        xs, ys = x[samples][None], y[samples][None]
        grads, _ = private_grads(model, params, xs, ys, torch.ones(ys.shape), dp, [seed])
        return torch.cat([g.reshape(-1) for g in grads])

    clipped = mean_grad(0.0, noise_generator(0, 1, 0))
    assert clipped.norm() <= 0.1 + 1e-5  # a mean of vectors at most 0.1 long
    for i in range(8):  # each sample alone: its gradient, far longer, cut to exactly 0.1
        assert mean_grad(0.0, noise_generator(0, 1, 0), slice(i, i + 1)).norm() == pytest.approx(
            0.1, rel=1e-4
        )
    noised = mean_grad(2.0, noise_generator(0, 1, 0))
    assert torch.equal(noised, mean_grad(2.0, noise_generator(0, 1, 0)))
    other = mean_grad(2.0, noise_generator(0, 1, 1))
    assert not torch.equal(noised, other)
    # noise of std z C / B per coordinate: z = 2, C = 0.1, B = 8
    assert (noised - clipped).std().item() == pytest.approx(2 * 0.1 / 8, rel=0.05)
