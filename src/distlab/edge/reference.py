"""The boards' arithmetic replayed in numpy float32, operation by operation, so a board's
weights can be checked bit for bit (firmware/edge_lr/edge_lr.ino does the same steps).

Every operation is one IEEE-754 single-precision `+ - * /` or a comparison, in the firmware's
order; numpy float32 and the AVR's float library round those identically. The sigmoid avoids
`exp` (avr-libc's is not correctly rounded): exp(-a) for a = min(|z|, 16) is a degree-6 Taylor
polynomial in Horner form on t = -a/64, squared six times.

>>> float(sigmoid(np.float32([0.0]))[0])
0.5
>>> w, b = reference_train(np.zeros(1, np.float32), 0.0, np.float32([[1.0], [-1.0]]),
...                        np.array([1, 0]), epochs=1, lr=1.0, batch=2)
>>> float(w[0]), float(b)
(0.5, 0.0)
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
ONE = F32(1.0)
CLAMP = F32(16.0)


def exp_neg(a: np.ndarray) -> np.ndarray:
    """exp(-a) for a in [0, 16], as the firmware's exp_neg computes it."""
    t = a * F32(-0.015625)
    e = np.ones_like(t)
    for k in range(6, 0, -1):
        e = ONE + (t * e) / F32(k)
    for _ in range(6):
        e = e * e
    return e


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The firmware's sigmoid, elementwise over float32 `z`."""
    z = np.asarray(z, dtype=F32)
    a = np.where(z < 0, -z, z)
    a = np.where(a > CLAMP, CLAMP, a)
    e = exp_neg(a)
    s = ONE / (ONE + e)
    return np.where(z < 0, e * s, s)


def logits(w: np.ndarray, b: float, x: np.ndarray) -> np.ndarray:
    """z = b + w0 x0 + w1 x1 + ..., added left to right, for every row of `x`."""
    x = np.asarray(x, dtype=F32)
    z = np.full(len(x), F32(b), dtype=F32)
    for j in range(x.shape[1]):
        z = z + F32(w[j]) * x[:, j]
    return z


def predict_proba(w: np.ndarray, b: float, x: np.ndarray) -> np.ndarray:
    """P(label 1) for every row of `x`, exactly as a board's PRED computes it."""
    return sigmoid(logits(w, b, x))


def accuracy(w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose predicted label (probability >= 0.5) equals `y`."""
    if len(x) == 0:
        return float("nan")
    predicted = predict_proba(w, b, x) >= F32(0.5)
    return float(np.mean(predicted == (np.asarray(y) == 1)))


def batch_sizes(samples: int, batch: int) -> list[int]:
    """The sizes of one epoch's batches: full ones, then the remainder.

    >>> batch_sizes(10, 4)
    [4, 4, 2]
    """
    full, rest = divmod(samples, batch)
    return [batch] * full + ([rest] if rest else [])


def batch_step(
    w: np.ndarray, b: np.float32, x: np.ndarray, y: np.ndarray, lr: np.float32
) -> tuple[np.ndarray, np.float32]:
    """One mini-batch update: gradients summed sample by sample, then w -= (lr / n) g."""
    err = predict_proba(w, b, x) - np.asarray(y, dtype=F32)
    g = np.zeros_like(w)
    gb = F32(0.0)
    for i in range(len(x)):
        g = g + err[i] * x[i]
        gb = gb + err[i]
    step = lr / F32(len(x))
    return w - step * g, b - step * gb


def reference_train(
    w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, batch: int
) -> tuple[np.ndarray, np.float32]:
    """What a board computes from weights (w, b) on samples (x, y), streamed in order every
    epoch in batches of `batch` (the last one of an epoch smaller): bit for bit."""
    w = np.array(w, dtype=F32)
    b = F32(b)
    x = np.asarray(x, dtype=F32)
    y = np.asarray(y)
    lr32 = F32(lr)
    for _ in range(epochs):
        start = 0
        for size in batch_sizes(len(x), batch):
            w, b = batch_step(w, b, x[start : start + size], y[start : start + size], lr32)
            start += size
    return w, b


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two float32 arrays are identical bit for bit (so -0.0 differs from 0.0)."""
    a = np.ascontiguousarray(a, dtype=F32)
    b = np.ascontiguousarray(b, dtype=F32)
    return a.shape == b.shape and bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))
