"""Scaling of synchronous data parallel on one host: 1 vs 2 processes, shared memory vs gloo.

LeNet on mnist-sample, batch 32 per worker (random sampler). Each repeat runs, interleaved:

    allreduce  1 process x 1 thread         the baseline
    allreduce  1 process x 2 threads        the same two cores, used by threads instead
    allreduce  2 processes x 1 thread       intra_node=auto (shared memory between the ranks)
    allreduce  2 processes x 1 thread       intra_node=gloo (the process group)
    ddp        1 and 2 processes x 1 thread (DDP's comm hook through the communicator:
               shared memory between the ranks)

`--before SRC` also runs the ddp pair with another tree's src/ (in a child interpreter, the
same config), so a change is measured before and after in one invocation.

Throughput = training samples per second from each run's own summary. Efficiency =
throughput(2 x 1) / (2 x throughput(1 x 1)); "vs threads" = throughput(2 x 1) /
throughput(1 x 2). Each ratio is taken within one repeat (the runs next to each other on a
shared, noisy machine), and its median over the repeats is printed: paired medians.

    python bench/data_parallel.py [--repeats 3] [--epochs 2] [--no-ddp] [--before SRC]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from distlab.api import run

# name -> (strategy, processes, threads per process, intra_node)
CONFIGS = {
    "allreduce 1x1": ("allreduce", 1, 1, "auto"),
    "allreduce 1x2": ("allreduce", 1, 2, "auto"),
    "allreduce 2x1 shm": ("allreduce", 2, 1, "auto"),
    "allreduce 2x1 gloo": ("allreduce", 2, 1, "gloo"),
    "ddp 1x1": ("ddp", 1, 1, "auto"),
    "ddp 2x1": ("ddp", 2, 1, "auto"),
}

# ratio name -> (numerator, denominator, factor): ratio = num / (factor x den)
RATIOS = {
    "efficiency, shared memory": ("allreduce 2x1 shm", "allreduce 1x1", 2),
    "efficiency, gloo": ("allreduce 2x1 gloo", "allreduce 1x1", 2),
    "2x1 shared memory vs 1x2 threads": ("allreduce 2x1 shm", "allreduce 1x2", 1),
    "2x1 gloo vs 1x2 threads": ("allreduce 2x1 gloo", "allreduce 1x2", 1),
    "shared memory vs gloo (2x1)": ("allreduce 2x1 shm", "allreduce 2x1 gloo", 1),
    "ddp efficiency": ("ddp 2x1", "ddp 1x1", 2),
    "ddp efficiency (before)": ("ddp 2x1 (before)", "ddp 1x1 (before)", 2),
}
BEFORE = " (before)"


def config(name: str, epochs: int, out: str) -> dict:
    strategy, workers, threads, intra_node = CONFIGS[name.removesuffix(BEFORE)]
    return {
        "strategy": strategy,
        "workers": workers,
        "dataset": "mnist-sample",
        "model": "lenet",
        "batch_size": 32,
        "sampler": "random",
        "epochs": epochs,
        "threads": threads,
        "intra_node": intra_node,
        "out_dir": out,
        "save_model": False,
    }


CHILD = (
    "import json, sys; from distlab.api import run; "
    "print(json.dumps(run(json.loads(sys.argv[1])).summary['samples_per_second']))"
)


def measure_before(name: str, epochs: int, out: str, src: str) -> float:
    """Samples per second of the same config run by the tree at `src`."""
    env = {**os.environ, "PYTHONPATH": src}
    cmd = [sys.executable, "-c", CHILD, json.dumps(config(name, epochs, out))]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def measure(name: str, epochs: int, out: str) -> dict:
    """Throughput and how far step 1 stands out, from one run's summary and events."""
    result = run(config(name, epochs, out))
    steps = [e["duration"] for e in result.events if e["kind"] == "step"]
    return {
        "samples_per_second": result.summary["samples_per_second"],
        "step1_over_median": round(steps[0] / statistics.median(steps), 2),
        "environment": result.summary["environment"],
    }


def paired_ratios(repeats: list[dict[str, float]]) -> dict[str, dict]:
    """Each ratio within every repeat, then its median and range over the repeats."""
    out = {}
    for ratio, (num, den, factor) in RATIOS.items():
        values = [r[num] / (factor * r[den]) for r in repeats if num in r and den in r]
        if values:
            out[ratio] = {
                "median": round(statistics.median(values), 3),
                "min": round(min(values), 3),
                "max": round(max(values), 3),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--no-ddp", action="store_true", help="leave the ddp runs out")
    parser.add_argument("--before", help="another tree's src/ to run the ddp pair with too")
    args = parser.parse_args()
    names = [n for n in CONFIGS if not (args.no_ddp and n.startswith("ddp"))]
    if args.before and not args.no_ddp:
        names += [n + BEFORE for n in CONFIGS if n.startswith("ddp")]
    repeats, environment, load_before = [], None, os.getloadavg()
    with tempfile.TemporaryDirectory() as out:
        for i in range(args.repeats):
            rates = {}
            for name in names if i % 2 == 0 else names[::-1]:  # no config always goes first
                if name.endswith(BEFORE):
                    rates[name] = measure_before(name, args.epochs, out, args.before)
                    continue
                got = measure(name, args.epochs, out)
                rates[name], environment = got["samples_per_second"], got["environment"]
            repeats.append(rates)
            print(f"repeat {i + 1}: " + ", ".join(f"{n} {v:.0f}" for n, v in rates.items()))
    medians = {n: round(statistics.median(r[n] for r in repeats)) for n in names}
    ratios = paired_ratios(repeats)
    for name, rate in medians.items():
        print(f"{name:31s} {rate:8d} samples/s (median)")
    for ratio, value in ratios.items():
        print(f"{ratio:34s} {value['median']:.3f}  (range {value['min']}-{value['max']})")
    print(f"load average (1, 5, 15 min) before {load_before}, after {os.getloadavg()}")
    report = {"samples_per_second": medians, "ratios": ratios, "repeats": repeats}
    print(json.dumps({**report, "environment": environment}))


if __name__ == "__main__":
    main()
