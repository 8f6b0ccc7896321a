"""What compressing an update costs next to computing it: every compressor of transforms/ on
one LeNet-sized update against one LeNet training step, on one thread.

The update is a gradient of LeNet on MNIST (P = 44426 float32). Its cost is one encode into
the bytes that travel and one decode of them (Chain.encode then Chain.decode, one sender),
as a worker pays it each step. The step is one SGD step of LeNet on a batch of 32 MNIST-
shaped images (forward, backward, update). Both are timed in the same process, interleaved
within each repeat (medians of `--steps` calls each), and each compressor's cost is printed
as a fraction of the step; the goal is <= 10%. Each ratio is taken within one repeat and its
median over the repeats is printed: paired medians, on a shared, noisy machine.

    python bench/compression.py [--repeats 5] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os

# One thread for the compressors' numpy (its BLAS reads these at import) as for torch's step.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from distlab.config import OptimizerConfig  # noqa: E402
from distlab.config_sections import CompressConfig  # noqa: E402
from distlab.models import build_model  # noqa: E402
from distlab.training import compute_gradients, flat_grads, make_optimizer  # noqa: E402
from distlab.transforms.chain import Chain  # noqa: E402

# name -> compress settings
KINDS = {
    "fp16": {"kind": "fp16"},
    "bf16": {"kind": "bf16"},
    "topk 1%": {"kind": "topk"},
    "topk 1% + error feedback": {"kind": "topk", "error_feedback": True},
    "topk 1% + fp16": {"kind": ["topk", "fp16"]},
    "randk 1%": {"kind": "randk"},
    "qsgd 127 levels": {"kind": "qsgd"},
    "qsgd 1 level": {"kind": "qsgd", "levels": 1},
    "sign (scaled)": {"kind": "sign"},
    "majority": {"kind": "majority"},
    "powersgd rank 2": {"kind": "powersgd"},
}
GOAL = 0.10


def median_seconds(call, steps: int) -> float:
    """Median wall time of `steps` calls, after two warm-up calls."""
    call(), call()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_step():
    """One LeNet SGD step on 32 MNIST-shaped images; returns (step, its gradient, shapes)."""
    model = build_model("lenet", (1, 28, 28), 10, seed=0)
    optimizer = make_optimizer(model.parameters(), OptimizerConfig(lr=0.01))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (32,), generator=gen)

    def step() -> None:
        compute_gradients(model, x, y)
        optimizer.step()

    step()
    shapes = [tuple(p.shape) for p in model.parameters()]
    return step, flat_grads(model).reshape(1, -1).clone(), shapes


def codec(settings: dict, grad: torch.Tensor, shapes: list[tuple[int, ...]]):
    """One encode and one decode of the gradient through the chain; returns (call, chain)."""
    chain = Chain(CompressConfig(**settings), shapes, seed=0)
    senders = np.zeros(1, dtype=np.int64)

    def call() -> None:
        chain.decode(chain.encode(grad, senders))

    return call, chain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    step, grad, shapes = training_step()
    calls = {name: codec(settings, grad, shapes) for name, settings in KINDS.items()}
    load_before, repeats = os.getloadavg(), []
    for i in range(args.repeats):
        names = list(KINDS) if i % 2 == 0 else list(KINDS)[::-1]  # no codec always first
        step_s = median_seconds(step, args.steps)
        seconds = {name: median_seconds(calls[name][0], args.steps) for name in names}
        seconds["step"] = (step_s + median_seconds(step, args.steps)) / 2  # before and after
        repeats.append(seconds)
        print(f"repeat {i + 1}: step {seconds['step'] * 1e3:.2f} ms")
    step_ms = statistics.median(r["step"] for r in repeats) * 1e3
    print(f"\nLeNet step, batch 32, 1 thread: {step_ms:.2f} ms (median)")
    print(f"{'compressor':26s} {'ms':>7s} {'of step':>8s} {'ratio':>6s} {'bytes':>7s}")
    rows = {}
    for name, (_, chain) in calls.items():
        ms = statistics.median(r[name] for r in repeats) * 1e3
        share = statistics.median(r[name] / r["step"] for r in repeats)
        ratio = chain.dense_bytes / chain.payload_bytes
        rows[name] = {
            "ms": round(ms, 3),
            "of_step": round(share, 4),
            "ratio": round(ratio, 1),
            "bytes": chain.payload_bytes,
        }
        mark = "" if share <= GOAL else "  over the goal"
        print(f"{name:26s} {ms:7.3f} {share:8.1%} {ratio:5.1f}x {chain.payload_bytes:7d}{mark}")
    print(f"load average (1, 5, 15 min) before {load_before}, after {os.getloadavg()}")
    print(json.dumps({"step_ms": round(step_ms, 3), "compressors": rows}))


if __name__ == "__main__":
    main()
