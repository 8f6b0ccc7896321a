"""Central differential privacy's parts: clipping rows, the private aggregate, adaptive
clipping, Poisson client sampling and the accountant against Opacus's own."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant

from distlab.accountant import epsilon, noise_for
from distlab.federated.privacy import CentralPrivacy, Settings
from distlab.federated.server import sample_clients
from distlab.federated.types import Updates
from distlab.strategies.aggregate import StreamingMean, weighted_mean
from distlab.transforms.privacy import (
    clip_rows,
    gaussian,
    next_clip,
    noise_generator,
    private_mean,
    update_noise,
)


def test_clip_rows_scales_long_deltas_to_the_norm_and_leaves_short_ones_bit_for_bit():
    start = torch.tensor([1.0, 1.0, 1.0])
    rows = torch.tensor([[1.1, 0.9, 1.2], [4.0, 5.0, 1.0], [float("nan"), 1.0, 1.0]])

    clipped, within = clip_rows(rows, start, clip=1.0)

    assert torch.equal(clipped[0], rows[0])
    assert torch.linalg.vector_norm(clipped[1] - start).item() == pytest.approx(1.0, rel=1e-6)
    direction = (rows[1] - start) / 5.0  # |(3, 4, 0)| = 5
    assert torch.allclose(clipped[1] - start, direction)
    assert torch.isnan(clipped[2, 0])
    assert within.tolist() == [True, False, False]


def test_private_mean_is_the_fixed_denominator_sum_plus_noise():
    start = torch.zeros(3)
    rows = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    mean = weighted_mean(rows, [1, 1])
    noise = torch.tensor([0.5, -0.5, 1.0])

    out = private_mean(mean, start, count=2, expected=4.0, noise=noise)

    assert torch.allclose(out, (rows.sum(0) + noise) / 4.0)


def test_private_mean_of_a_full_round_without_noise_is_the_fedavg_mean_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(50, generator=gen)
    rows = start + torch.randn(8, 50, generator=gen)
    equal_counts = [625] * 8
    fedavg = StreamingMean()
    fedavg.add(rows, np.array(equal_counts))
    uniform = StreamingMean()
    uniform.add(rows, np.ones(8))

    out = private_mean(uniform.result(), start, count=8, expected=8.0, noise=None)

    assert torch.equal(out, fedavg.result())


def test_the_noise_is_keyed_by_seed_round_and_attempt():
    draw = lambda *key: gaussian(1000, 2.0, noise_generator(*key))  # noqa: E731

    assert torch.equal(draw(0, 21, 3, 0), draw(0, 21, 3, 0))
    assert not torch.equal(draw(0, 21, 3, 0), draw(0, 21, 4, 0))
    assert not torch.equal(draw(0, 21, 3, 0), draw(0, 21, 3, 1))
    assert draw(1, 21, 3, 0).std().item() == pytest.approx(2.0, rel=0.1)


def test_adaptive_clip_moves_toward_the_quantile():
    gen = np.random.default_rng(0)
    # every client unclipped: b = 1 > gamma, the norm shrinks by exp(-eta (1 - gamma))
    shrunk = next_clip(2.0, 10, 10.0, 0.0, 0.2, 0.5, gen)
    grown = next_clip(2.0, 0, 10.0, 0.0, 0.2, 0.5, gen)

    assert shrunk == pytest.approx(2.0 * math.exp(-0.2 * 0.5))
    assert grown == pytest.approx(2.0 * math.exp(0.2 * 0.5))


def test_update_noise_spends_what_z_alone_would_and_refuses_too_small_a_count_noise():
    z_delta = update_noise(1.0, 1.0)

    assert z_delta == pytest.approx((1.0 - 0.25) ** -0.5)
    assert z_delta**-2 + (2 * 1.0) ** -2 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="count_noise .* too small for privacy.noise"):
        update_noise(1.0, 0.5)
    assert update_noise(0.0, 0.1) == 0.0


def test_poisson_sampling_keeps_each_client_at_rate_q_from_the_keyed_generator():
    sizes = [len(sample_clients(3, r, 0, 40, 10, poisson=True)) for r in range(1, 401)]

    assert (
        sample_clients(3, 5, 0, 40, 10, True).tolist()
        == sample_clients(3, 5, 0, 40, 10, True).tolist()
    )
    assert np.mean(sizes) == pytest.approx(10, rel=0.05)
    assert len(set(sizes)) > 5  # the count varies
    assert (np.diff(sample_clients(3, 5, 0, 40, 10, True)) > 0).all()
    assert len(sample_clients(3, 5, 0, 40, 10)) == 10  # fixed-size sampling is unchanged
    assert sample_clients(3, 5, 0, 40, 40, True).tolist() == list(range(40))
    assert min(len(sample_clients(3, r, 0, 40, 1, True)) for r in range(1, 200)) == 0


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_epsilon_equals_opacus_accountant_stepped_as_often(kind):
    opacus = RDPAccountant() if kind == "rdp" else PRVAccountant()
    for _ in range(7):
        opacus.step(noise_multiplier=1.1, sample_rate=0.25)

    assert epsilon(1.1, 0.25, 7, 1e-5, kind) == pytest.approx(opacus.get_epsilon(delta=1e-5))
    assert epsilon(0.0, 0.25, 7, 1e-5, kind) is None  # no noise: no bound
    assert epsilon(1.1, 0.25, 0, 1e-5, kind) == 0.0


def test_noise_for_reaches_the_target_and_refuses_one_out_of_reach():
    noise = noise_for(4.0, 1e-5, 0.1, 20)

    assert epsilon(noise, 0.1, 20, 1e-5) <= 4.0
    assert epsilon(noise * 0.9, 0.1, 20, 1e-5) > 4.0 - 0.5
    with pytest.raises(ValueError, match="privacy.target_epsilon=1e-09 is out of reach") as info:
        noise_for(1e-9, 1e-5, 0.1, 20)
    assert "\n" not in str(info.value)


def settings(**changes) -> Settings:
    base = dict(
        noise=1.0, update_noise=1.0, clip=1.0, sample_rate=0.5, expected=2.0, delta=1e-5,
        accountant="rdp", adaptive=False, quantile=0.5, clip_step=0.2, count_noise=0.2,
    )  # fmt: skip
    return Settings(**(base | changes))


def chunk(start: torch.Tensor, deltas: torch.Tensor) -> Updates:
    n = len(deltas)
    clients = np.arange(n)
    return Updates(clients, start + deltas, np.full(n, 10), {"loss": np.zeros(n)})


def round_through(privacy: CentralPrivacy, round_: int, start, deltas) -> torch.Tensor:
    """One attempt at a round as the seam drives it: aggregation first, then the rows."""
    aggregation = privacy.aggregation(StreamingMean())
    updates = privacy.updates(round_, start, chunk(start, deltas))
    aggregation.add(updates.params, updates.num_examples)
    return aggregation.result()


def test_the_transform_clips_noises_and_accounts_each_attempt():
    start = torch.zeros(4)
    deltas = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.1, 0.0], [0.0, 0.0, 0.0, 0.2]])
    privacy = CentralPrivacy(settings(), seed=7)

    out = round_through(privacy, 1, start, deltas)

    clipped = torch.stack([deltas[0] / 5.0, deltas[1], deltas[2]])
    noise = gaussian(4, 1.0, noise_generator(7, 21, 1, 0))
    assert torch.allclose(out, (clipped.sum(0) + noise) / 2.0, atol=1e-6)
    fields = privacy.fields(1)
    assert fields["clip"] == 1.0
    assert fields["epsilon"] == pytest.approx(epsilon(1.0, 0.5, 1, 1e-5))
    round_through(privacy, 2, start, deltas)
    round_through(privacy, 2, start, deltas)  # a retried attempt: a step of its own
    assert privacy.steps == 3
    assert privacy.attempt == 1


def test_adaptive_clipping_keeps_its_norm_across_a_checkpoint():
    start = torch.zeros(4)
    small = torch.full((4, 4), 0.01)  # every client within the norm: it shrinks
    privacy = CentralPrivacy(settings(adaptive=True, count_noise=0.0, expected=4.0), seed=0)

    round_through(privacy, 1, start, small)
    resumed = CentralPrivacy(settings(adaptive=True, count_noise=0.0, expected=4.0), seed=0)
    resumed.load_state_dict(privacy.state_dict())

    assert privacy.fields(1)["clip"] == 1.0
    assert privacy.clip == pytest.approx(math.exp(-0.2 * 0.5))
    assert resumed.clip == privacy.clip and resumed.steps == 1
