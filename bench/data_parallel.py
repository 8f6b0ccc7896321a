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
import statistics
import tempfile

from distlab.api import run


def measure(strategy: str | dict, workers: int, epochs: int, out: str) -> dict:
    """Throughput, start-up seconds, how far step 1 stands out, and the environment."""
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
    steps = [e["duration"] for e in result.events if e["kind"] == "step"]
    return {
        "samples_per_second": result.summary["samples_per_second"],
        "startup_seconds": result.summary["startup_seconds"],
        "step1_over_median": round(steps[0] / statistics.median(steps), 2),
        "environment": result.summary["environment"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    best: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.repeats):
            for strategy in ("allreduce", "ddp"):
                for workers in (1, 2):
                    key = (strategy, workers)
                    got = measure(strategy, workers, args.epochs, out)
                    if (
                        key not in best
                        or got["samples_per_second"] > best[key]["samples_per_second"]
                    ):
                        best[key] = got
    report = {"environment": best[("allreduce", 2)]["environment"]}
    for strategy in ("allreduce", "ddp"):
        one, two = best[(strategy, 1)], best[(strategy, 2)]
        rate1, rate2 = one["samples_per_second"], two["samples_per_second"]
        report[strategy] = {
            "samples_per_s_1": rate1,
            "samples_per_s_2": rate2,
            "efficiency": round(rate2 / (2 * rate1), 3),
            "startup_seconds_2": two["startup_seconds"],
            "step1_over_median_2": two["step1_over_median"],
        }
        print(
            f"{strategy:10s} 1 proc {rate1:8.0f} samples/s   2 procs {rate2:8.0f} samples/s   "
            f"efficiency {rate2 / (2 * rate1):.3f}   step 1 / median (2 procs) "
            f"{two['step1_over_median']}"
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
