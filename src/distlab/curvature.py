"""Curvature of a loss from Hessian-vector products: top eigenpairs, trace, projected mixing.

Nothing here forms the Hessian. Every estimate is built from products H v, each one exact
(up to rounding) by differentiating the gradient a second time (Pearlmutter 1994, "Fast exact
multiplication by the Hessian"). One gradient graph is built per estimate and every product
reuses it, so an estimate costs one forward and backward pass to build the graph, then one
extra backward pass (about twice a plain backward) per product. PyHessian (Yao et al. 2020)
uses the same building blocks to measure the curvature of neural-network losses.

A `loss_fn` takes a list of tensors shaped like `params` and returns a scalar loss;
`loss_on_batches` makes one for an nn.Module and a few batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[list[torch.Tensor]], torch.Tensor]
HvpFn = Callable[[torch.Tensor], torch.Tensor]

# Unseeded calls draw from this fixed seed rather than the global RNG, so an estimate never
# shifts the training run's random stream and two identical calls give identical results.
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Curvature:
    """One worker's curvature estimate: top eigenpairs (rows of `eigenvectors`, orthonormal,
    eigenvalues descending), the Hessian trace, and the Hessian-vector products it cost."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    trace: float
    hvps: int


def count_params(params: Sequence[torch.Tensor] | int) -> int:
    """The parameter count P of a list of tensors (an int is taken as P itself)."""
    if isinstance(params, int):
        return params
    return sum(p.numel() for p in params)


def check_k(k: int, params: Sequence[torch.Tensor] | int) -> None:
    """ValueError unless 0 <= k <= P: there are only P orthogonal directions to project out."""
    size = count_params(params)
    if k < 0:
        raise ValueError(f"strategy.k (got {k}) must be >= 0")
    if k > size:
        raise ValueError(f"strategy.k (got {k}) must be <= the model's {size} parameters")


def _flatten(pieces: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in pieces])


def _split(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    sizes = [p.numel() for p in like]
    return [v.view_as(p) for v, p in zip(torch.split(vector, sizes), like, strict=True)]


def hvp_operator(loss_fn: LossFn, params: Sequence[torch.Tensor]) -> HvpFn:
    """v -> H v at `params` (flat in, flat out), for many v from one gradient graph.

    The gradient is built once with create_graph; each product is one backward pass through
    it (reverse over reverse). That is cheaper per product than torch.func's forward over
    reverse, which reruns the forward and backward for every v, and Lanczos needs tens of
    products at the same point. A parameter the loss does not depend on gets zero curvature.
    """
    leaves = [p.detach().requires_grad_(True) for p in params]
    with torch.enable_grad():
        grads = torch.autograd.grad(
            loss_fn(leaves), leaves, create_graph=True, materialize_grads=True
        )
    # A gradient with no graph is constant in the parameters: its rows of H are zero.
    live = [i for i, g in enumerate(grads) if g.requires_grad]

    def apply(vector: torch.Tensor) -> torch.Tensor:
        if not live:
            return torch.zeros_like(vector)
        pieces = _split(vector.detach(), leaves)
        products = torch.autograd.grad(
            [grads[i] for i in live],
            leaves,
            grad_outputs=[pieces[i] for i in live],
            retain_graph=True,
            materialize_grads=True,
        )
        return _flatten(products).detach()

    return apply


def hvp(loss_fn: LossFn, params: Sequence[torch.Tensor], vector: torch.Tensor) -> torch.Tensor:
    """The Hessian of `loss_fn` at `params` times the flat `vector` (Pearlmutter 1994)."""
    return hvp_operator(loss_fn, params)(vector)


def _generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(DEFAULT_SEED)


def _random_unit(size: int, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Drawn on the CPU so a seeded CPU generator gives the same vector on every device.
    draw = torch.randn(size, generator=generator, dtype=like.dtype)
    return (draw / draw.norm()).to(like.device)


def _orthogonalize(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Remove w's components along the rows of `basis`. Classical Gram-Schmidt run twice
    ("twice is enough", Giraud et al. 2005) keeps the basis orthogonal to working precision."""
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def _ritz(alpha: list[float], beta: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of the Lanczos tridiagonal matrix, eigenvalues descending."""
    size = len(alpha)
    tri = torch.diag(torch.tensor(alpha, dtype=torch.float64))
    if size > 1:
        off = torch.tensor(beta[: size - 1], dtype=torch.float64)
        tri += torch.diag(off, 1) + torch.diag(off, -1)
    values, vectors = torch.linalg.eigh(tri)
    return values.flip(0), vectors.flip(1)


def _converged(
    values: torch.Tensor, vectors: torch.Tensor, residual: float, k: int, tol: float
) -> bool:
    """Ritz pair i has ||H y_i - theta_i y_i|| = residual * |s_i[-1]| (Golub & Van Loan), so
    the top k are done when those are small next to the spectrum's scale."""
    if len(values) < k:
        return False
    scale = max(float(values.abs().max()), 1e-30)
    return bool((residual * vectors[-1, :k].abs() <= tol * scale).all())


def _signed(vectors: torch.Tensor) -> torch.Tensor:
    """Fix each row's sign (largest entry positive): eigenvectors are only defined up to sign,
    and a fixed choice makes a seeded estimate reproducible to the bit."""
    if vectors.shape[0] == 0:
        return vectors
    peak = vectors.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(vectors.gather(1, peak))
    return vectors * torch.where(signs == 0, torch.ones_like(signs), signs)


def lanczos(
    apply: HvpFn,
    like: torch.Tensor,
    k: int,
    iterations: int,
    generator: torch.Generator | None = None,
    tol: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The k largest algebraic eigenpairs of the symmetric operator `apply` on vectors shaped
    like the flat `like`, and the products it used (at most `iterations`, capped at P).

    Lanczos 1950 with full reorthogonalization (Golub & Van Loan, Matrix Computations, 4th ed.
    2013, ch. 10). Each product extends a Krylov basis; the eigenpairs of the small
    tridiagonal matrix give the estimates (Ritz pairs). It stops early once the top k Ritz
    residuals are below `tol` times the largest Ritz value. If the basis spans an invariant
    subspace (repeated eigenvalues), it restarts from a fresh random vector orthogonal to it.
    """
    generator = _generator(generator)
    size = like.numel()
    steps = min(iterations, size)
    basis = torch.zeros(steps, size, dtype=like.dtype, device=like.device)
    alpha: list[float] = []
    beta: list[float] = []
    q = _random_unit(size, like, generator)
    for j in range(steps):
        basis[j] = q
        w = apply(q)
        alpha.append(float(q @ w))
        w = _orthogonalize(w, basis[: j + 1])
        residual = float(w.norm())
        values, vectors = _ritz(alpha, beta)
        if j + 1 == steps or _converged(values, vectors, residual, k, tol):
            break
        q, residual = _next_vector(w, residual, values, basis[: j + 1], like, generator)
        beta.append(residual)
    used = len(alpha)
    # The tridiagonal problem is solved in float64 on the CPU; the results go where `like` is.
    ritz = vectors[:, :k].T.to(like.device, like.dtype) @ basis[:used]
    ritz = ritz / ritz.norm(dim=1, keepdim=True)
    return values[:k].to(like.device, like.dtype), _signed(ritz), used


def _next_vector(
    w: torch.Tensor,
    residual: float,
    values: torch.Tensor,
    basis: torch.Tensor,
    like: torch.Tensor,
    generator: torch.Generator,
) -> tuple[torch.Tensor, float]:
    """The next Lanczos vector, or after a breakdown (w ~ 0: the basis spans an invariant
    subspace) a fresh random direction orthogonal to the basis, with coupling beta = 0."""
    floor = 1e3 * torch.finfo(like.dtype).eps * max(float(values.abs().max()), 1e-30)
    if residual > floor:
        return w / residual, residual
    fresh = _orthogonalize(_random_unit(like.numel(), like, generator), basis)
    return fresh / fresh.norm(), 0.0


def _check_counts(k: int, params: Sequence[torch.Tensor], iterations: int) -> None:
    check_k(k, params)
    if iterations < k:
        raise ValueError(f"curvature iterations (got {iterations}) must be >= k ({k})")


def top_eigenpairs(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    k: int,
    iterations: int,
    generator: torch.Generator | None = None,
    tol: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest algebraic eigenvalues of the Hessian of `loss_fn` at `params`
    (descending, Tensor[k]) and their eigenvectors (orthonormal rows, Tensor[k, P]).

    Largest algebraic, not largest magnitude: the directions wanted are those where the loss
    rises fastest, and a negative eigenvalue (a direction of descent) is not one of them.
    Lanczos (Lanczos 1950) rather than power or subspace iteration: from the same m
    products it yields all k pairs, and its convergence is Chebyshev accelerated (Kaniel
    1966, Saad 1980), where power iteration converges only as (lambda_2 / lambda_1)^m and
    subspace iteration spends k products per sweep. Plain three-term Lanczos loses
    orthogonality in floating point and repeats converged eigenvalues as "ghosts" (Paige
    1971); keeping the m basis vectors and reorthogonalizing against all of them costs
    O(m^2 P) flops and m P numbers of memory, small next to m products that each pass over
    the data. `iterations` bounds the products (the Krylov dimension m); it stops earlier
    when the top k have converged (`tol`, see lanczos). Deterministic under a seeded
    `generator` (None means a fixed seed, never the global RNG).
    """
    _check_counts(k, params, iterations)
    like = _flatten([p.detach() for p in params])
    if k == 0:
        return like.new_zeros(0), like.new_zeros(0, like.numel())
    values, vectors, _ = lanczos(hvp_operator(loss_fn, params), like, k, iterations, generator, tol)
    return values, vectors


def _rademacher(size: int, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    signs = torch.randint(0, 2, (size,), generator=generator).to(like.dtype) * 2 - 1
    return signs.to(like.device)


def hutchinson(
    apply: HvpFn, like: torch.Tensor, samples: int, generator: torch.Generator | None = None
) -> float:
    """mean of z^T H z over `samples` Rademacher probes z (see hutchinson_trace)."""
    if samples < 1:
        raise ValueError(f"curvature samples (got {samples}) must be >= 1")
    generator = _generator(generator)
    total = 0.0
    for _ in range(samples):
        z = _rademacher(like.numel(), like, generator)
        total += float(z @ apply(z))
    return total / samples


def hutchinson_trace(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    samples: int,
    generator: torch.Generator | None = None,
) -> float:
    """The Hessian trace by Hutchinson's estimator (Hutchinson 1989): E[z^T H z] = tr(H) for
    Rademacher z, the probes of least variance among estimators of this form (Hutchinson
    1989), 2 (||H||_F^2 - sum_i H_ii^2) / samples (Avron & Toledo 2011). Costs `samples`
    products."""
    like = _flatten([p.detach() for p in params])
    return hutchinson(hvp_operator(loss_fn, params), like, samples, generator)


def estimate_curvature(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    k: int,
    iterations: int,
    samples: int,
    generator: torch.Generator | None = None,
    tol: float = 1e-8,
) -> Curvature:
    """Top-k eigenpairs and trace from one gradient graph (one forward and backward fewer
    than calling top_eigenpairs and hutchinson_trace apart): at most `iterations` +
    `samples` Hessian-vector products."""
    _check_counts(k, params, iterations)
    generator = _generator(generator)
    apply = hvp_operator(loss_fn, params)
    like = _flatten([p.detach() for p in params])
    values, vectors, used = like.new_zeros(0), like.new_zeros(0, like.numel()), 0
    if k > 0:
        values, vectors, used = lanczos(apply, like, k, iterations, generator, tol)
    trace = hutchinson(apply, like, samples, generator)
    return Curvature(values, vectors, trace, used + samples)


def project_mix(
    own: torch.Tensor,
    neighbours_mean: torch.Tensor,
    eigenvectors: torch.Tensor,
    step: float = 1.0,
) -> torch.Tensor:
    """own + step (I - V^T V)(neighbours_mean - own), V the orthonormal rows of `eigenvectors`
    (k x P): the move toward the neighbours is kept only in the complement of the k
    high-curvature directions, so a worker does not leave its own low-loss valley along them.
    With k = 0 it is plain mixing, computed by the same expression. For gossip weights W,
    x_i' = sum_j W_ij x_j is this with step = 1 - W_ii and neighbours_mean =
    sum_{j != i} W_ij x_j / (1 - W_ii).

    >>> own, mean = torch.tensor([0.0, 0.0]), torch.tensor([2.0, 4.0])
    >>> project_mix(own, mean, torch.tensor([[1.0, 0.0]]), step=0.5)
    tensor([0., 2.])
    """
    size = own.numel()
    if own.shape != neighbours_mean.shape or own.dim() != 1:
        raise ValueError(
            f"project_mix needs flat vectors of one shape (got {tuple(own.shape)} "
            f"and {tuple(neighbours_mean.shape)})"
        )
    if eigenvectors.dim() != 2 or eigenvectors.shape[1] != size:
        raise ValueError(f"eigenvectors must be k x {size} (got {tuple(eigenvectors.shape)})")
    move = neighbours_mean - own
    if eigenvectors.shape[0]:
        move = move - eigenvectors.T @ (eigenvectors @ move)
    return own + step * move


def loss_on_batches(
    model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> LossFn:
    """loss_fn(params) -> the model's mean cross-entropy over `batches`, with `params` in
    model.parameters() order standing in for the model's own (torch.func.functional_call).

    The curvature is that of the loss in eval mode: dropout off, so the function is the same
    at every call and its Hessian is defined; batch norm normalizes with its running
    statistics (passed as copies, so the model's buffers never change), so the loss of one
    sample does not depend on the rest of the batch. The model's own train/eval mode is
    restored after each call, and its weights are never touched.
    """
    if not batches:
        raise ValueError("loss_on_batches needs at least one (x, y) batch (got none)")
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    names = [name for name, _ in model.named_parameters()]
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}

    def loss_fn(params: list[torch.Tensor]) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            state = {**buffers, **dict(zip(names, params, strict=True))}
            logits = torch.func.functional_call(model, state, (x,))
        finally:
            model.train(was_training)
        return F.cross_entropy(logits, y)

    return loss_fn
