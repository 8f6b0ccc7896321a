"""Cutting a model into pipeline stages: where the cuts go and what each stage holds.

A model declares its forward pass as a chain of pieces (`models.SPLIT_POINTS`,
`model.layers()`); S stages take S - 1 cuts between pieces. The cuts are the model's
declared ones (the course seed 003: convolutions on one process, fully connected layers on
the other), or the ones that balance the stages' parameter counts or measured compute time,
the balancing GPipe (Huang et al. 2019) and PipeDream (Narayanan et al. 2019) do to keep the
slowest stage, which sets the pipeline's pace, as fast as possible.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from distlab.models import SPLIT_POINTS, SplitPoints


@dataclass(frozen=True)
class Plan:
    """The cuts of one pipeline: stage s runs pieces bounds[s][0] to bounds[s][1] - 1."""

    cuts: tuple[int, ...]
    layers: int

    @property
    def bounds(self) -> list[tuple[int, int]]:
        edges = (0, *self.cuts, self.layers)
        return list(itertools.pairwise(edges))

    @property
    def stages(self) -> int:
        return len(self.cuts) + 1


def split_points(model: str) -> SplitPoints:
    if model not in SPLIT_POINTS:
        raise ValueError(
            f"model {model!r} declares no pipeline split points "
            f"(allowed: {', '.join(sorted(SPLIT_POINTS))})"
        )
    return SPLIT_POINTS[model]


def declared_plan(points: SplitPoints, stages: int) -> Plan:
    """The first S - 1 declared cuts, the most natural ones first."""
    return Plan(tuple(sorted(points.declared[: stages - 1])), points.layers)


def balanced_plan(costs: Sequence[float], stages: int) -> Plan:
    """The cuts that make the costliest stage as cheap as possible (ties: the earliest
    cuts). A handful of pieces: trying every choice is exact and instant."""
    best: tuple[float, tuple[int, ...]] | None = None
    for cuts in itertools.combinations(range(1, len(costs)), stages - 1):
        edges = (0, *cuts, len(costs))
        worst = max(sum(costs[a:b]) for a, b in itertools.pairwise(edges))
        if best is None or worst < best[0]:
            best = (worst, cuts)
    assert best is not None  # stages <= pieces is checked before any process starts
    return Plan(best[1], len(costs))


def layer_params(layers: Sequence[nn.Module]) -> list[int]:
    return [sum(p.numel() for p in layer.parameters()) for layer in layers]


def layer_seconds(layers: Sequence[nn.Module], x: torch.Tensor, repeats: int = 5) -> list[float]:
    """Forward plus backward seconds of each piece on the batch `x` (the fastest of
    `repeats` tries: the minimum is the least disturbed by other processes). The parameters'
    gradients are left as they were."""
    grads = [p.grad for layer in layers for p in layer.parameters()]
    best = [float("inf")] * len(layers)
    for _ in range(repeats):
        h = x
        for i, layer in enumerate(layers):
            h = h.detach().requires_grad_(i > 0)
            begin = time.perf_counter()
            out = layer(h)
            out.sum().backward()
            best[i] = min(best[i], time.perf_counter() - begin)
            h = out
    for p, g in zip((p for layer in layers for p in layer.parameters()), grads, strict=True):
        p.grad = g
    return best


def stage_module(layers: Sequence[nn.Module], bounds: tuple[int, int]) -> nn.Sequential:
    """The pieces of one stage; they share their parameters with the full model."""
    return nn.Sequential(*layers[bounds[0] : bounds[1]])


def owned_names(model: nn.Module, module: nn.Module) -> list[str]:
    """The full model's parameter names that `module` (one stage) holds, in model order:
    what a stage sends so the lead can rebuild the whole model."""
    own = {id(p) for p in module.parameters()}
    return [name for name, p in model.named_parameters() if id(p) in own]


def boundary_shapes(layers: Sequence[nn.Module], sample: tuple[int, ...]) -> list[tuple]:
    """The per-sample shape at every boundary: shapes[i] enters piece i; the last one is
    the logits'. One sample of zeros, no gradients."""
    shapes = [tuple(sample)]
    h = torch.zeros(1, *sample)
    with torch.no_grad():
        for layer in layers:
            was = layer.training
            layer.eval()  # dropout off: only the shape is wanted
            h = layer(h)
            layer.train(was)
            shapes.append(tuple(h.shape[1:]))
    return shapes


def cut_elements(shapes: Sequence[tuple], plan: Plan) -> list[int]:
    """Elements per sample crossing each cut (an activation forward, its gradient back)."""
    return [int(torch.Size(shapes[c]).numel()) for c in plan.cuts]
