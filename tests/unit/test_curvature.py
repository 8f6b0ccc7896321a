"""Curvature estimates against known Hessians: a quadratic with chosen eigenpairs, and small
real models on synthetic data whose full Hessian the test alone builds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distlab.curvature import (
    check_k,
    estimate_curvature,
    hutchinson_trace,
    hvp,
    loss_on_batches,
    project_mix,
    top_eigenpairs,
)
from distlab.data.datasets import make_synthetic
from distlab.models import Mlp, build_model

F64 = torch.float64
P = 20
# Distinct eigenvalues; -12 has the largest magnitude but is not among the largest algebraic.
EIGENVALUES = torch.cat(
    [torch.tensor([9.0, 6.0, 4.0]), torch.linspace(2.5, -1.0, 16), torch.tensor([-12.0])]
).to(F64)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def known_quadratic() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """A = Q diag(EIGENVALUES) Q^T, the loss 0.5 x^T A x, and a point x."""
    q, _ = torch.linalg.qr(torch.randn(P, P, generator=seeded(1), dtype=F64))
    a = q @ torch.diag(EIGENVALUES) @ q.T
    a = (a + a.T) / 2  # exactly symmetric, so A v is the Hessian product to the last bit
    return a, q, [torch.randn(P, generator=seeded(2), dtype=F64)]


def quadratic(a: torch.Tensor):
    return lambda ps: 0.5 * ps[0] @ (a @ ps[0])


def sign_free_distance(u: torch.Tensor, v: torch.Tensor) -> float:
    return min(float((u - v).norm()), float((u + v).norm()))


def trace_error(hessian: torch.Tensor, samples: int) -> float:
    """Standard error of Hutchinson's estimate with Rademacher probes (Avron & Toledo 2011)."""
    off_diagonal = float((hessian**2).sum() - (hessian.diagonal() ** 2).sum())
    return math.sqrt(2 * off_diagonal / samples)


# ---------------------------------------------------------------- the quadratic


def test_hvp_equals_a_times_v_on_a_quadratic():
    a, _, x = known_quadratic()
    v = torch.randn(P, generator=seeded(3), dtype=F64)

    product = hvp(quadratic(a), x, v)

    torch.testing.assert_close(product, a @ v, rtol=0, atol=1e-13)


def test_top_eigenpairs_match_the_known_ones_from_fewer_products_than_p():
    a, q, x = known_quadratic()

    values, vectors = top_eigenpairs(quadratic(a), x, k=3, iterations=15, generator=seeded())

    assert values.shape == (3,) and vectors.shape == (3, P)
    torch.testing.assert_close(values, EIGENVALUES[:3], rtol=0, atol=1e-3)
    for i in range(3):
        assert sign_free_distance(vectors[i], q[:, i]) < 1e-3
    torch.testing.assert_close(vectors @ vectors.T, torch.eye(3, dtype=F64), rtol=0, atol=1e-10)


def test_top_eigenpairs_are_reproducible_under_a_seed():
    a, _, x = known_quadratic()

    first = top_eigenpairs(quadratic(a), x, k=2, iterations=8, generator=seeded(5))
    again = top_eigenpairs(quadratic(a), x, k=2, iterations=8, generator=seeded(5))

    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_repeated_eigenvalues_restart_and_still_give_an_orthonormal_basis():
    # 2 I: the first Krylov vector already spans an invariant subspace (Lanczos breakdown).
    a, x = 2 * torch.eye(P, dtype=F64), [torch.zeros(P, dtype=F64)]

    values, vectors = top_eigenpairs(quadratic(a), x, k=3, iterations=3, generator=seeded())

    torch.testing.assert_close(values, torch.full((3,), 2.0, dtype=F64))
    torch.testing.assert_close(vectors @ vectors.T, torch.eye(3, dtype=F64), rtol=0, atol=1e-12)


def test_hutchinson_trace_is_within_four_standard_errors_of_the_trace():
    a, _, x = known_quadratic()
    samples = 2000
    error = trace_error(a, samples)  # 0.51 here, against a trace of 19

    trace = hutchinson_trace(quadratic(a), x, samples, generator=seeded())

    assert error < 0.03 * float(EIGENVALUES.sum())
    assert abs(trace - float(EIGENVALUES.sum())) < 4 * error


def test_estimate_curvature_counts_its_products():
    a, _, x = known_quadratic()

    found = estimate_curvature(quadratic(a), x, k=3, iterations=15, samples=10)

    assert found.hvps == 15 + 10
    torch.testing.assert_close(found.eigenvalues, EIGENVALUES[:3], rtol=0, atol=1e-3)


def test_k_zero_costs_no_products_and_returns_empty():
    a, _, x = known_quadratic()

    values, vectors = top_eigenpairs(quadratic(a), x, k=0, iterations=0)

    assert values.shape == (0,) and vectors.shape == (0, P)


# ---------------------------------------------------------------- project_mix


def mix_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(P, generator=seeded(7), dtype=F64), torch.randn(
        P, generator=seeded(8), dtype=F64
    )


@pytest.mark.parametrize("step", [1.0, 0.5, 1 / 3])
def test_project_mix_with_k_zero_is_plain_mixing_exactly(step):
    own, mean = mix_inputs()

    mixed = project_mix(own, mean, torch.zeros(0, P, dtype=F64), step)

    assert torch.equal(mixed, own + step * (mean - own))


def test_project_mix_with_k_equal_p_leaves_own_unchanged():
    own, mean = mix_inputs()
    _, q, _ = known_quadratic()

    mixed = project_mix(own, mean, q.T)

    torch.testing.assert_close(mixed, own, rtol=0, atol=1e-12)


def test_project_mix_moves_only_in_the_complement_of_the_eigenvectors():
    own, mean = mix_inputs()
    _, q, _ = known_quadratic()
    top = q.T[:4]

    mixed = project_mix(own, mean, top, step=0.5)

    torch.testing.assert_close(top @ (mixed - own), torch.zeros(4, dtype=F64), atol=1e-12, rtol=0)
    rest = q.T[4:]  # in the complement it makes the plain move
    plain = own + 0.5 * (mean - own)
    torch.testing.assert_close(rest @ mixed, rest @ plain, atol=1e-12, rtol=0)


def test_project_mix_rejects_mismatched_shapes_in_one_line():
    own, mean = mix_inputs()

    with pytest.raises(ValueError, match=r"^eigenvectors must be k x 20 \(got \(2, 19\)\)$"):
        project_mix(own, mean, torch.zeros(2, P - 1, dtype=F64))


# ---------------------------------------------------------------- real models, real data


def synthetic_batches(count: int = 2, size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = make_synthetic(samples=count * size, test=10)
    x, y = data.x_train.to(F64), data.y_train
    return [(x[i : i + size], y[i : i + size]) for i in range(0, count * size, size)]


def model_point(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach() for p in model.parameters()]


def full_hessian(loss_fn, params: list[torch.Tensor]) -> torch.Tensor:
    """The whole P x P Hessian, for a model small enough to check the estimates against."""
    flat = torch.cat([p.reshape(-1) for p in params])
    sizes = [p.numel() for p in params]

    def on_flat(v: torch.Tensor) -> torch.Tensor:
        pieces = [c.view_as(p) for c, p in zip(torch.split(v, sizes), params, strict=True)]
        return loss_fn(pieces)

    return torch.autograd.functional.hessian(on_flat, flat)


def test_hvp_on_an_mlp_matches_a_finite_difference_of_gradients():
    model = build_model("mlp", (20,), 4, seed=0).to(F64)
    loss_fn, point = loss_on_batches(model, synthetic_batches()), model_point(model)
    v = torch.randn(sum(p.numel() for p in point), generator=seeded(4), dtype=F64)
    eps = 1e-5

    product = hvp(loss_fn, point, v)

    grads = [flat_grad(loss_fn, point, v, sign * eps) for sign in (1, -1)]
    torch.testing.assert_close(product, (grads[0] - grads[1]) / (2 * eps), rtol=1e-5, atol=1e-7)


def flat_grad(loss_fn, point, v, eps) -> torch.Tensor:
    """The gradient at point + eps v (central differences of it approximate H v)."""
    sizes = [p.numel() for p in point]
    shifted = [
        (p + eps * d.view_as(p)).requires_grad_(True)
        for p, d in zip(point, torch.split(v, sizes), strict=True)
    ]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_fn(shifted), shifted)])


@pytest.mark.parametrize("name", ["logreg", "mlp-6"])
def test_estimates_on_a_tiny_model_match_its_full_hessian(name):
    model = build_model("logreg", (20,), 4, seed=0) if name == "logreg" else Mlp((20,), 4, 6)
    model = model.to(F64)
    loss_fn, point = loss_on_batches(model, synthetic_batches()), model_point(model)
    hessian = full_hessian(loss_fn, point)
    true_values, true_vectors = torch.linalg.eigh(hessian)

    found = estimate_curvature(loss_fn, point, k=2, iterations=40, samples=200)

    assert hessian.shape[0] < 200 and found.hvps <= 40 + 200
    torch.testing.assert_close(found.eigenvalues, true_values.flip(0)[:2], rtol=1e-6, atol=0)
    assert sign_free_distance(found.eigenvectors[0], true_vectors[:, -1]) < 1e-4
    assert abs(found.trace - float(hessian.trace())) < 4 * trace_error(hessian, 200)


def test_loss_on_batches_uses_eval_mode_and_leaves_batch_norm_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5))
    model = nn.Sequential(*model, nn.Linear(8, 4)).to(F64).train()
    batches = synthetic_batches()
    model(batches[0][0])  # running statistics that differ from a fresh layer's
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn, point = loss_on_batches(model, batches), model_point(model)
    v = torch.randn(sum(p.numel() for p in point), generator=seeded(6), dtype=F64)

    first, again = hvp(loss_fn, point, v), hvp(loss_fn, point, v)

    assert torch.equal(first, again)  # dropout off: one function, one Hessian
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model.eval()(x), y)
        assert float(loss_fn(point)) == pytest.approx(float(expected), rel=1e-12)


# ---------------------------------------------------------------- bad input


def test_k_larger_than_the_parameter_count_is_one_line():
    model = build_model("logreg", (20,), 4, seed=0)

    with pytest.raises(ValueError) as caught:
        check_k(10000, list(model.parameters()))

    assert str(caught.value) == "strategy.k (got 10000) must be <= the model's 84 parameters"


def test_estimates_check_k_and_iterations_before_any_product():
    a, _, x = known_quadratic()

    with pytest.raises(ValueError, match=r"^strategy\.k \(got 21\) must be <= the model's 20 "):
        top_eigenpairs(quadratic(a), x, k=21, iterations=30)
    with pytest.raises(ValueError, match=r"^curvature iterations \(got 2\) must be >= k \(3\)$"):
        top_eigenpairs(quadratic(a), x, k=3, iterations=2)
    with pytest.raises(ValueError, match=r"^strategy\.k \(got -1\) must be >= 0$"):
        check_k(-1, 5)
