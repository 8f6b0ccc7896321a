"""What compression and the simulated clock add to a vectorized FedAvg round.

1. A vectorized round with top-k (1%, error feedback) against the plain vectorized round:
   two in-process runs of the same FedAvg (LeNet, mnist-sample, 50 clients all sampled,
   `--rounds` rounds), interleaved `--repeats` times; the ratio of their median round
   durations (the round events' own `duration`, evaluations apart). Goal: <= 1.3x.
2. The simulated clock's bookkeeping per round (clock.Clock and the round loop's
   RoundClock.plan over the round's clients, lognormal speeds, a deadline with partial work,
   as train_rounds calls it) against the plain round's median duration. Goal: <= 5%.

    python bench/tradeoff_rounds.py [--repeats 3] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np

from distlab.api import run
from distlab.clock import Clock
from distlab.config_sections import SystemConfig
from distlab.federated.stragglers import RoundClock

CLIENTS = 50


def config(out: str, rounds: int, compress: dict | None) -> dict:
    cfg = {
        "dataset": "mnist-sample", "model": "lenet", "threads": 1, "out_dir": out,
        "strategy": {"name": "fedavg", "clients": CLIENTS, "rounds": rounds,
                     "executor": "vectorized"},
        "eval_every": rounds, "save_model": False,
    }  # fmt: skip
    if compress:
        cfg["compress"] = compress
    return cfg


def round_seconds(out: str, rounds: int, compress: dict | None) -> float:
    """The median duration of a run's rounds, its first (warm-up) left out."""
    result = run(config(out, rounds, compress))
    durations = [e["duration"] for e in result.events if e["kind"] == "round"]
    return statistics.median(durations[1:])


def clock_seconds(sizes: np.ndarray, calls: int = 200) -> float:
    """Median seconds of one round's clock work: plan the attempt, advance the clock."""
    system = SystemConfig(speed="lognormal", sigma=1.0, deadline=0.5, stragglers="partial")
    clock = RoundClock(Clock(system, CLIENTS, 0), sizes, 32, 1, 177704, 177704)
    clients = np.arange(CLIENTS)
    times = []
    for r in range(calls):
        start = time.perf_counter()
        work = clock.plan(r + 1, clients, clock.now)
        clock.advance(work.seconds)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    topk = {"kind": "topk", "ratio": 0.01, "error_feedback": True}
    plain, compressed = [], []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.repeats):
            plain.append(round_seconds(out, args.rounds, None))
            compressed.append(round_seconds(out, args.rounds, topk))
    ratios = [c / p for c, p in zip(compressed, plain, strict=True)]
    sizes = np.full(CLIENTS, 4000 // CLIENTS)
    clock = clock_seconds(sizes)
    print(json.dumps({
        "plain_round_s": round(statistics.median(plain), 4),
        "topk_round_s": round(statistics.median(compressed), 4),
        "topk_over_plain": round(statistics.median(ratios), 3),
        "clock_per_round_s": round(clock, 6),
        "clock_share_of_round": round(clock / statistics.median(plain), 4),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
