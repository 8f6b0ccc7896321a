"""What privacy, secure aggregation, attacks and defenses add to a vectorized FedAvg round.

Every variant is an in-process FedAvg run of LeNet on mnist-sample, 100 clients all sampled
each round (the scale of SecAgg+'s goal), `--rounds` rounds, interleaved with the plain run
`--repeats` times; a variant's figure is the median over repeats of the ratio of its median
round duration (the round events' own `duration`, the first round left out) to the plain
run's of the same repeat. Goals:

- client-level DP-SGD (per-sample clipping and noise for every sampled client): <= 3x;
- central DP (DP-FedAvg: clipping and noise at the server): <= 1.1x;
- SecAgg+ for 100 clients a round, 10 neighbours each: <= 3x (its own seconds are in the
  round events); SecAgg with every pair masking reported;
- an attack (sign-flip by 20%), and the streaming defenses (norm bounding, centered
  clipping): <= 1.1x; median, trimmed mean, Krum and Bulyan reported (Krum and Bulyan are
  quadratic in the clients).

    python bench/privacy.py [--repeats 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

from distlab.api import run

CLIENTS = 100
F = 20  # attackers a round at 20%, the f of Krum and Bulyan

VARIANTS: dict[str, dict] = {
    "central_dp": {"privacy": {"mode": "central", "noise": 1.0, "clip": 1.0}},
    "dpsgd_clients": {"privacy": {"mode": "dpsgd", "noise": 1.0, "clip": 1.0}},
    "secagg_plus": {"secagg": {"enabled": True, "neighbours": 10}},
    "secagg_all_pairs": {"secagg": {"enabled": True}},
    "sign_flip_mean": {"attack": {"kind": "sign-flip", "fraction": 0.2}},
    "norm_bound": {"strategy": {"aggregator": "norm-bound"}},
    "centered_clip": {"strategy": {"aggregator": "centered-clip"}},
    "median": {"strategy": {"aggregator": "median"}},
    "trimmed_mean": {"strategy": {"aggregator": "trimmed-mean"}},
    "krum": {"strategy": {"aggregator": "krum", "krum_f": F}},
    "bulyan": {"strategy": {"aggregator": "bulyan", "krum_f": F}},
}
GOALS = {
    "central_dp": 1.1,
    "dpsgd_clients": 3.0,
    "secagg_plus": 3.0,
    "sign_flip_mean": 1.1,
    "norm_bound": 1.1,
    "centered_clip": 1.1,
}


def config(out: str, rounds: int, extra: dict) -> dict:
    strategy = {"name": "fedavg", "clients": CLIENTS, "rounds": rounds, "executor": "vectorized"}
    strategy.update(extra.get("strategy", {}))
    cfg = {
        "dataset": "mnist-sample", "model": "lenet", "threads": 1, "out_dir": out,
        "strategy": strategy, "eval_every": rounds, "save_model": False,
    }  # fmt: skip
    cfg.update({k: v for k, v in extra.items() if k != "strategy"})
    return cfg


def round_seconds(out: str, rounds: int, extra: dict) -> tuple[float, dict]:
    """The median duration of a run's rounds, its first (warm-up) left out, and the last
    round event (its own figures: secagg seconds, epsilon)."""
    result = run(config(out, rounds, extra))
    events = [e for e in result.events if e["kind"] == "round"]
    return statistics.median(e["duration"] for e in events[1:]), events[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=list(VARIANTS))
    args = parser.parse_args()
    plain: list[float] = []
    ratios: dict[str, list[float]] = {name: [] for name in args.only}
    last: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.repeats):
            base, _ = round_seconds(out, args.rounds, {})
            plain.append(base)
            for name in args.only:
                seconds, last[name] = round_seconds(out, args.rounds, VARIANTS[name])
                ratios[name].append(seconds / base)
    report = {"plain_round_s": round(statistics.median(plain), 4)}
    for name, values in ratios.items():
        ratio = round(statistics.median(values), 3)
        goal = GOALS.get(name)
        report[name] = {"over_plain": ratio, "goal": goal,
                        "met": None if goal is None else ratio <= goal}  # fmt: skip
    for name in ("secagg_plus", "secagg_all_pairs"):
        if name in last:
            report[name]["secagg_seconds"] = last[name].get("secagg_seconds")
            report[name]["secagg_bytes"] = last[name].get("secagg_bytes")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
