"""Scaling of the paradigms that need no per-step exchange: local SGD and Hogwild, 1 vs 2
processes, against allreduce measured in the same run.

LeNet on mnist-sample, batch 32 per worker (random sampler), one torch thread per process,
so 2 processes use two cores where 1 uses one: the same total work. Efficiency =
throughput(2) / (2 * throughput(1)) with each strategy's own 1-process run as the baseline;
throughput = training samples per second from the run's summary. Runs are interleaved and
repeated, the best of each kept, because the machine is shared and noisy.

    python bench/paradigms.py [--repeats 3] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile

from data_parallel import measure as measure_run  # the same run settings, one place

from distlab.strategies import STRATEGIES

# (label, strategy config): local SGD at several periods H, Hogwild, and the allreduce baseline.
VARIANTS = [
    ("allreduce", {"name": "allreduce"}),
    ("local-sgd H=1", {"name": "local-sgd", "period": 1}),
    ("local-sgd H=8", {"name": "local-sgd", "period": 8}),
    ("local-sgd H=32", {"name": "local-sgd", "period": 32}),
    ("local-sgd H=end", {"name": "local-sgd", "period": "end"}),
    ("hogwild", {"name": "hogwild"}),
]


def throughput(strategy: dict, workers: int, epochs: int, out: str) -> float:
    return measure_run(strategy, workers, epochs, out)["samples_per_second"]


def measure(repeats: int, epochs: int) -> dict[tuple[str, int], float]:
    variants = [(label, s) for label, s in VARIANTS if s["name"] in STRATEGIES]
    best: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(repeats):
            for label, strategy in variants:
                for workers in (1, 2):
                    rate = throughput(strategy, workers, epochs, out)
                    best[(label, workers)] = max(best.get((label, workers), 0.0), rate)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    best = measure(args.repeats, args.epochs)
    report = {}
    print("| variant | 1 process samples/s | 2 processes samples/s | efficiency |")
    print("|---|---|---|---|")
    for label in dict.fromkeys(label for label, _ in best):
        one, two = best[(label, 1)], best[(label, 2)]
        report[label] = {"samples_per_s_1": one, "samples_per_s_2": two}
        report[label]["efficiency"] = round(two / (2 * one), 3)
        print(f"| {label} | {one:.0f} | {two:.0f} | {two / (2 * one):.3f} |")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
