"""Shared training pieces: optimizer factory, gradients, flat buffers and evaluation."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from distlab.config import OptimizerConfig


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig):
    """SGD (momentum, weight decay) or Adam from the run's optimizer settings."""
    if cfg.name == "adam":
        return EagerAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return EagerSGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class EagerOptimizer:
    """torch.optim's methods without their torch.compile guards.

    torch wraps `add_param_group`, `zero_grad`, `state_dict`, `load_state_dict` and every
    `step` in decorators that import torch._dynamo on their first call, and with it sympy:
    about 800 modules and 0.7 s before the first step, on every rank. Outside torch.compile
    the decorators do nothing else, so calling the functions they wrap computes the same
    bits. tests/unit/test_startup.py checks both: no torch._dynamo, identical parameters."""

    add_param_group = inspect.unwrap(torch.optim.Optimizer.add_param_group)
    zero_grad = inspect.unwrap(torch.optim.Optimizer.zero_grad)
    state_dict = inspect.unwrap(torch.optim.Optimizer.state_dict)
    load_state_dict = inspect.unwrap(torch.optim.Optimizer.load_state_dict)


def eager_step(optimizer: type[torch.optim.Optimizer]):
    """An optimizer class's own step body under no_grad: what its decorator sets up for a
    non-differentiable optimizer, less the graph breaks that import torch._dynamo."""
    return torch.no_grad()(inspect.unwrap(optimizer.step))


class EagerSGD(EagerOptimizer, torch.optim.SGD):
    """torch.optim.SGD, bit for bit, that never imports torch._dynamo."""

    step = eager_step(torch.optim.SGD)


class EagerAdam(EagerOptimizer, torch.optim.Adam):
    """torch.optim.Adam, bit for bit, that never imports torch._dynamo."""

    step = eager_step(torch.optim.Adam)


def batch_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def compute_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Zero the gradients, run forward and backward on one batch; return the mean loss."""
    model.zero_grad(set_to_none=False)
    loss = batch_loss(model, x, y)
    loss.backward()
    return float(loss.detach())


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    per_class: list[float]


# Test samples evaluated at once: LeNet's first activations of 1,000 MNIST images (14 MB)
# overflow the cache, and the forward pass of 250 at a time runs 2x faster than of 1,000.
EVAL_BATCH = 250


@torch.inference_mode()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int, batch_size: int = EVAL_BATCH
) -> EvalResult:
    """Test loss, accuracy and per-class accuracy (NaN-free: absent classes report 0)."""
    was_training = model.training
    if was_training:  # dropout and batch norm behave differently in training mode
        model.eval()
    loss_sum, hits = 0.0, []
    for i in range(0, len(y), batch_size):
        logits = model(x[i : i + batch_size])
        target = y[i : i + batch_size]
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        hits.append(logits.argmax(1) == target)
    if was_training:
        model.train()
    hit = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)
    total = torch.bincount(y, minlength=classes).float()
    correct = torch.bincount(y[hit], minlength=classes).float()
    per_class = torch.where(total > 0, correct / total.clamp(min=1), torch.zeros(classes))
    return EvalResult(
        loss_sum / max(len(y), 1),
        int(correct.sum()) / max(len(y), 1),
        [round(float(v), 4) for v in per_class],
    )


def attach_flat_grads(model: nn.Module, extra: int = 0) -> torch.Tensor:
    """Make every parameter's .grad a view into one flat buffer (plus `extra` trailing
    slots), so backward writes straight into the message an allreduce sends: no copies."""
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    flat = torch.zeros(total + extra, device=params[0].device, dtype=params[0].dtype)
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


def flat_grads(model: nn.Module) -> torch.Tensor:
    """All gradients as one flat buffer (one message instead of one per tensor)."""
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def set_flat_grads(model: nn.Module, flat: torch.Tensor) -> None:
    offset = 0
    for p in model.parameters():
        n = p.numel()
        if p.grad is None:  # a model that never ran backward (the parameter server's)
            p.grad = torch.zeros_like(p)
        p.grad.copy_(flat[offset : offset + n].view_as(p))
        offset += n


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach()


def set_flat_params(model: nn.Module, flat: torch.Tensor) -> None:
    torch.nn.utils.vector_to_parameters(flat, model.parameters())
