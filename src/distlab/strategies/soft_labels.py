"""Soft labels: a model's probabilities at a temperature, as a teacher's signal.

Hinton, Vinyals and Dean 2015, "Distilling the knowledge in a neural network": a student
learns from (1 - alpha) CE(student, y) + alpha T^2 KL(p_teacher || p_student), p a softmax
at temperature T. An ensemble's teacher is its members' probabilities averaged, and the
ensemble's accuracy is that of its averaged probabilities (temperature 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from distlab.runtime.context import WorkerContext


def distill_loss(
    logits: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor, params
) -> torch.Tensor:
    """Hinton et al. 2015: (1 - alpha) CE + alpha T^2 KL(teacher || softmax(logits / T)),
    divided by gradient_bound(params). `teacher` holds probabilities at temperature T;
    `params` carries `temperature` and `alpha`."""
    t = params.temperature
    hard = F.cross_entropy(logits, y)
    soft = F.kl_div(F.log_softmax(logits / t, 1), teacher, reduction="batchmean")
    return ((1 - params.alpha) * hard + params.alpha * t * t * soft) / gradient_bound(params)


def gradient_bound(params) -> float:
    """How much larger than the labels' alone a step on Hinton's loss can be: (1 - alpha) +
    alpha T.

    The paper's T^2 keeps the soft term's gradients on the hard term's scale where the logits
    are small against T (its section 2.1: there the soft term is logit matching, its gradient
    (z - v) / N). Elsewhere it overshoots: per sample, the gradient with respect to the
    logits is (1 - alpha) (softmax(z) - y) + alpha T (softmax(z / T) - p), each difference of
    probabilities at most 2 in L1 norm, so the soft term pulls up to T times harder than the
    labels. A target whose logits start large (vgg-small's: cross-entropy 4 to 9 at
    initialization on mnist-sample) then took SGD steps 2.5 times those of the same target
    on the labels (T 4, alpha 0.5), which already overshoots at --lr 0.05, and diverged
    (NaN at its sixth step with --seed 3, three seeds of 0..5 below 0.2 accuracy). Dividing
    by the bound keeps the steps within the labels' own, whatever T and alpha; the two
    terms' ratio, the paper's weighting, is unchanged, and at alpha 0 or T 1 it is 1."""
    return (1 - params.alpha) + params.alpha * params.temperature


def ensemble_teacher(logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """The members' probabilities at `temperature`, averaged: the ensemble's soft labels."""
    return torch.stack([F.softmax(z / temperature, 1) for z in logits]).mean(0)


@torch.no_grad()
def predict_probabilities(model: nn.Module, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    was_training = model.training
    model.eval()
    probs = torch.cat([F.softmax(model(x[i : i + batch]), 1) for i in range(0, len(x), batch)])
    model.train(was_training)
    return probs


def accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    return round(float((probs.argmax(1) == y).float().mean()), 6)


def evaluate_members(ctx: WorkerContext, member: nn.Module) -> tuple[list[float], float] | None:
    """Collective: every member's test accuracy and the ensemble's (its averaged
    probabilities), on the lead; None elsewhere."""
    probs = ctx.comm.gather(predict_probabilities(member, ctx.data.x_test), dst=ctx.lead)
    if probs is None:
        return None
    y = ctx.data.y_test
    return [accuracy(p, y) for p in probs], accuracy(torch.stack(probs).mean(0), y)
