"""Scaling of synchronous data parallel: 1 vs 2 processes for allreduce and ddp.

LeNet on mnist-sample, batch 32 per worker (random sampler), one torch thread per process,
so the 2-process run uses two cores where the 1-process run uses one: the same total work.
Efficiency = throughput(2) / (2 * throughput(1)), with throughput = training samples per
second from each run's own summary. Runs are interleaved and repeated, and the best of each
is kept, because the machine is shared and noisy.

    python bench/data_parallel.py [--repeats 3] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile

from distlab.api import run


def throughput(strategy: str, workers: int, epochs: int, out: str) -> float:
    result = run(
        {
            "strategy": strategy,
            "workers": workers,
            "dataset": "mnist-sample",
            "model": "lenet",
            "batch_size": 32,
            "sampler": "random",
            "epochs": epochs,
            "threads": 1,
            "out_dir": out,
            "save_model": False,
        }
    )
    return result.summary["samples_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    best: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.repeats):
            for strategy in ("allreduce", "ddp"):
                for workers in (1, 2):
                    key = (strategy, workers)
                    best[key] = max(
                        best.get(key, 0.0), throughput(strategy, workers, args.epochs, out)
                    )
    report = {}
    for strategy in ("allreduce", "ddp"):
        one, two = best[(strategy, 1)], best[(strategy, 2)]
        report[strategy] = {
            "samples_per_s_1": one,
            "samples_per_s_2": two,
            "efficiency": round(two / (2 * one), 3),
        }
        print(
            f"{strategy:10s} 1 proc {one:8.0f} samples/s   2 procs {two:8.0f} samples/s   "
            f"efficiency {two / (2 * one):.3f}"
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
