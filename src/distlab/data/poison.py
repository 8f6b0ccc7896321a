"""Data poisoning: what attacking clients train on in place of their honest samples.

Label flipping relabels every training sample of an attacker y -> C - 1 - y (Tolpegin et al.
2020, "Data Poisoning Attacks Against Federated Learning Systems"). The backdoor stamps a
pixel pattern, a white square in the bottom-right corner, on a fraction of an attacker's
samples and relabels them as the target class (Gu et al. 2017, "BadNets"; Bagdasaryan et al.
2020, "How To Backdoor Federated Learning"): the model learns to answer the target whenever
the pattern is there. `triggered` stamps the same pattern on test images to measure it.

Every choice comes from the seed, so every rank that builds the clients' data poisons the
same samples.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from distlab.data.datasets import Dataset

PATCH = 4  # the side of the square (images) or the count of last features (vectors)
POISON_STREAM = 0xBAD  # keeps the draw of poisoned samples apart under the run's seed
DATA_POISONS = ("label-flip", "backdoor")


def flip_labels(y: torch.Tensor, classes: int) -> torch.Tensor:
    """Label flipping: y -> C - 1 - y."""
    return classes - 1 - y


def trigger_value(x_train: torch.Tensor) -> float:
    """The pattern's value: the brightest input of the training set, white in the model's
    input normalization ((1 - mean) / std for the image sets)."""
    return float(x_train.max())


def triggered(x: torch.Tensor, value: float) -> torch.Tensor:
    """A copy of `x` with the pattern stamped: a PATCH x PATCH square of `value` in the
    bottom-right corner of every channel of (N, C, H, W) images, or the last PATCH
    features of (N, F) vectors set to `value`."""
    out = x.clone()
    if out.dim() == 4:
        out[:, :, -PATCH:, -PATCH:] = value
    else:
        out[:, -PATCH:] = value
    return out


def backdoor_rows(indices: np.ndarray, fraction: float, seed: int, client: int) -> np.ndarray:
    """The samples of one attacker that carry the pattern: round(fraction * n), at least one
    when it has any, drawn from (seed, client)."""
    if len(indices) == 0:
        return indices[:0]
    k = min(len(indices), max(1, int(round(fraction * len(indices)))))
    rng = np.random.default_rng([seed, POISON_STREAM, client])
    return np.sort(rng.choice(indices, size=k, replace=False))


def poison(
    data: Dataset,
    kind: str,
    train: list[np.ndarray],
    attackers: np.ndarray,
    target: int = 0,
    fraction: float = 1.0,
    seed: int = 0,
) -> Dataset:
    """A copy of `data` whose training samples of the `attackers` (indices in `train`, one
    array per client) are poisoned by `kind`; the test set and every other sample as they
    were."""
    if kind not in DATA_POISONS:
        raise ValueError(f"unknown data poisoning {kind!r} (allowed: {', '.join(DATA_POISONS)})")
    x, y = data.x_train, data.y_train.clone()
    if kind == "label-flip":
        rows = np.concatenate([train[c] for c in attackers.tolist()] + [np.zeros(0, np.int64)])
        index = torch.from_numpy(rows.astype(np.int64)).to(y.device)
        y[index] = flip_labels(y[index], data.classes)
        return dataclasses.replace(data, y_train=y)
    parts = [backdoor_rows(train[c], fraction, seed, c) for c in attackers.tolist()]
    rows = np.concatenate(parts + [np.zeros(0, np.int64)]).astype(np.int64)
    index = torch.from_numpy(rows).to(y.device)
    x = x.clone()
    x[index] = triggered(x[index], trigger_value(data.x_train))
    y[index] = target
    return dataclasses.replace(data, x_train=x, y_train=y)
