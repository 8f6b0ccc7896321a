"""The numpy float32 replica of the boards' arithmetic, on hand-checked cases and against a
plain one-sample-at-a-time float32 transcription of the firmware's loops."""

from __future__ import annotations

import numpy as np
import pytest

from distlab.edge import reference
from distlab.edge.reference import F32, reference_train, same_bits, sigmoid


def test_sigmoid_hand_values():
    z = np.float32([0.0, -0.0, 16.0, -16.0, 1e4, -1e4])

    p = sigmoid(z)

    assert p[0] == 0.5 and p[1] == 0.5
    # Beyond |z| = 16 the argument is clamped: sigmoid(1e4) == sigmoid(16).
    assert p[4] == p[2] and p[5] == p[3]
    assert p[2] == pytest.approx(1 - 1.125e-7, abs=1e-7)


def test_sigmoid_is_close_to_the_true_one():
    z = np.linspace(-20, 20, 8001, dtype=np.float32)

    exact = 1 / (1 + np.exp(-z.astype(np.float64)))

    assert np.max(np.abs(sigmoid(z) - exact)) < 2e-6


def test_exp_neg_is_the_horner_polynomial_squared():
    # a = 0: t = 0, every Horner step gives 1, and 1 squared stays 1.
    assert reference.exp_neg(np.float32([0.0]))[0] == 1.0
    # a = 64 ln 2 would be 2**-64; the approximation stays within 1e-6 relative.
    a = np.float32([1.0, 5.0, 16.0])
    assert np.allclose(reference.exp_neg(a), np.exp(-a.astype(np.float64)), rtol=1e-6)


def test_one_batch_by_hand():
    # Two samples, p = 0.5 for both: err = (-0.5, 0.5), g = -0.5 * 1 + 0.5 * -1 = -1, gb = 0;
    # step = lr / 2 = 0.5, so w = 0 - 0.5 * -1 = 0.5 and b stays 0.
    x = np.float32([[1.0], [-1.0]])

    w, b = reference_train(np.zeros(1, np.float32), 0.0, x, np.array([1, 0]), 1, 1.0, 2)

    assert w.tolist() == [0.5] and b == 0.0


def test_batches_are_sequential_updates():
    # Batch size 1, step = lr = 1. Sample 1 (x 1, y 1): z 0, p 0.5, err -0.5, so w = 0.5 and
    # b = 0.5. Sample 2 (x -1, y 0) sees those: z = 0.5 + 0.5 * -1 = 0, p 0.5, err 0.5, so
    # w = 0.5 - 0.5 * -1 = 1 and b = 0.5 - 0.5 = 0.
    x = np.float32([[1.0], [-1.0]])

    w, b = reference_train(np.zeros(1, np.float32), 0.0, x, np.array([1, 0]), 1, 1.0, 1)

    assert w.tolist() == [1.0] and b == 0.0


def test_batch_sizes():
    assert reference.batch_sizes(10, 4) == [4, 4, 2]
    assert reference.batch_sizes(8, 4) == [4, 4]
    assert reference.batch_sizes(3, 16) == [3]


def firmware_transcription(w, b, x, y, epochs, lr, batch):
    """edge_lr.ino's loops, one float32 scalar operation at a time."""
    w = [F32(v) for v in w]
    b, lr = F32(b), F32(lr)
    for _ in range(epochs):
        for start in range(0, len(x), batch):
            rows = range(start, min(start + batch, len(x)))
            g, gb = [F32(0.0)] * len(w), F32(0.0)
            for i in rows:
                z = b
                for j in range(len(w)):
                    z = z + w[j] * F32(x[i, j])
                err = sigmoid(np.float32([z]))[0] - F32(y[i])
                g = [g[j] + err * F32(x[i, j]) for j in range(len(w))]
                gb = gb + err
            step = lr / F32(len(rows))
            w = [w[j] - step * g[j] for j in range(len(w))]
            b = b - step * gb
    return np.float32(w), b


def test_vectorized_reference_equals_the_scalar_transcription_bit_for_bit():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(23, 5)) * 3).astype(np.float32)
    y = rng.integers(0, 2, 23)
    w0 = rng.normal(size=5).astype(np.float32)

    w, b = reference_train(w0, 0.25, x, y, 2, 0.7, 4)
    tw, tb = firmware_transcription(w0, 0.25, x, y, 2, 0.7, 4)

    assert same_bits(w, tw) and same_bits(np.float32([b]), np.float32([tb]))


def test_same_bits_tells_zero_signs_apart():
    assert same_bits(np.float32([0.0, 1.0]), np.float32([0.0, 1.0]))
    assert not same_bits(np.float32([0.0]), np.float32([-0.0]))
    assert not same_bits(np.float32([1.0]), np.float32([1.0, 1.0]))


def test_accuracy_thresholds_at_one_half():
    x = np.float32([[2.0], [-2.0], [0.0]])

    # p = (0.88, 0.12, 0.5): predicted labels 1, 0, 1.
    assert reference.accuracy(np.float32([1.0]), 0.0, x, np.array([1, 0, 1])) == 1.0
    assert reference.accuracy(np.float32([1.0]), 0.0, x, np.array([0, 0, 0])) == 1 / 3
