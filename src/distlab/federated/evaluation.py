"""Client-side evaluation: each client's accuracy on its held-out local split with the global
model (after personalization: distlab.federated.personalization)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from distlab.federated.clients import ClientData
from distlab.training import EVAL_BATCH


@torch.inference_mode()
def local_accuracy(model: nn.Module, data: ClientData, x: torch.Tensor, y: torch.Tensor):
    """Per client, the global model's accuracy on the client's held-out samples (NaN for a
    client without any): every client's samples in one pass of EVAL_BATCH-sized batches."""
    counts = np.array([len(t) for t in data.test])
    owners = np.repeat(np.arange(len(counts)), counts)
    index = torch.from_numpy(np.concatenate(data.test)) if counts.sum() else torch.zeros(0).long()
    hits = np.zeros(len(index), dtype=bool)
    was_training = model.training
    if was_training:
        model.eval()
    for lo in range(0, len(index), EVAL_BATCH):
        idx = index[lo : lo + EVAL_BATCH]
        hits[lo : lo + len(idx)] = (model(x[idx]).argmax(1) == y[idx]).numpy()
    if was_training:
        model.train()
    correct = np.bincount(owners[hits], minlength=len(counts))
    return np.where(counts > 0, correct / np.maximum(counts, 1), np.nan)


def nanmean(values: np.ndarray) -> float | None:
    """The mean of the finite per-client values, to 6 digits; None when there are none."""
    finite = values[np.isfinite(values)]
    return round(float(finite.mean()), 6) if len(finite) else None
