"""FedAvg speed and accuracy: a plain PyTorch loop against distlab's executors.

mnist-sample (4000 train images), IID over 100 clients of 40, LeNet; each round 10 clients
train E=1 epoch with B=10 (4 SGD steps, lr 0.05). Measured, interleaved, in every repeat:

- steady round: the median seconds per round over rounds 4..30 (evaluation excluded) of the
  plain loop (the same work written directly in PyTorch) and of distlab's executors;
- whole process: the wall seconds of a fresh `distlab run` of 30 rounds with default
  settings (its default evaluation schedule, model.pt written, partition.png drawn), and of
  a fresh process running the plain loop's 30 rounds (imports, data, training).

Each figure is the median over the repeats; each ratio the median of the repeats' ratios to
the plain loop measured in the same repeat (the machine is shared, so only paired figures
compare). Then the test accuracy of the vectorized executor after 150 rounds.

    python bench/federated.py [--rounds 30] [--accuracy-rounds 150] [--repeats 3]
                              [--processes] [--flower] [--write]

--processes adds the processes executor (2 hosts, about 8 s a whole run). --flower adds
the peer framework: the same FedAvg on Flower's simulation engine (bench/flower_fedavg.py,
a fresh process per repeat: its steady round and its whole process), skipped with a note
when flwr or ray is not installed. --write puts the table in bench/RESULTS.md under
"## federated", keeping the notes written under it and every other section.

    python bench/federated.py --flower --write
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CLIENTS, PER_ROUND, BATCH, LR = 100, 10, 10, 0.05
RESULTS = Path(__file__).parent / "RESULTS.md"
GOAL_ROUND_S, GOAL_PROCESS_S = 0.009, 1.6


def fed_config(executor: str, rounds: int, out: str, workers: int = 1) -> dict:
    return {
        "dataset": "mnist-sample",
        "model": "lenet",
        "workers": workers,
        "batch_size": BATCH,
        "optimizer": {"lr": LR},
        "eval_every": rounds,
        "save_model": False,
        "out_dir": out,
        "strategy": {
            "name": "fedavg",
            "executor": executor,
            "clients": CLIENTS,
            "clients_per_round": PER_ROUND,
            "rounds": rounds,
        },
    }


def run_executor(executor: str, rounds: int, workers: int = 1) -> dict:
    """One api.run in this process; returns its round durations and final accuracy."""
    from distlab.api import run

    with tempfile.TemporaryDirectory() as out:
        result = run(fed_config(executor, rounds, out, workers))
    durations = [e["duration"] for e in result.events if e["kind"] == "round"]
    return {"durations": durations, "accuracy": result.summary["final_accuracy"]}


def run_loop(rounds: int) -> dict:
    """The baseline: FedAvg as a plain loop over clients with torch.optim.SGD."""
    from distlab.data.datasets import load_dataset
    from distlab.models import build_model

    data = load_dataset("mnist-sample")
    model = build_model("lenet", data.input_shape, data.classes, seed=0)
    parts = np.array_split(np.random.default_rng(0).permutation(len(data.y_train)), CLIENTS)
    rng = np.random.default_rng(1)
    glob = {k: v.clone() for k, v in model.state_dict().items()}
    durations = []
    for _ in range(rounds):
        start = time.perf_counter()
        states = []
        for client in rng.choice(CLIENTS, PER_ROUND, replace=False):
            model.load_state_dict(glob)
            opt = torch.optim.SGD(model.parameters(), lr=LR)
            idx = parts[client][rng.permutation(len(parts[client]))]
            for i in range(0, len(idx), BATCH):
                batch = torch.from_numpy(idx[i : i + BATCH])
                opt.zero_grad()
                F.cross_entropy(model(data.x_train[batch]), data.y_train[batch]).backward()
                opt.step()
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        glob = {k: torch.stack([s[k] for s in states]).mean(0) for k in glob}
        durations.append(time.perf_counter() - start)
    return {"durations": durations}


def steady(durations: list[float]) -> float:
    return statistics.median(durations[3:] or durations)


def steady_round(variant: str, rounds: int) -> float:
    if variant == "loop":
        return steady(run_loop(rounds)["durations"])
    workers = 2 if variant == "processes" else 1
    return steady(run_executor(variant, rounds, workers)["durations"])


def cli_command(rounds: int, out: str) -> list[str]:
    """`distlab run` of the benchmark's federation, every other setting its default."""
    sets = {"strategy.clients_per_round": PER_ROUND, "strategy.rounds": rounds, "optimizer.lr": LR}
    cmd = [sys.executable, "-m", "distlab", "run", "--strategy", "fedavg"]
    cmd += ["--clients", str(CLIENTS), "--batch-size", str(BATCH), "--out-dir", out]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd


def whole_process_seconds(variant: str, rounds: int) -> float:
    """Wall seconds of a fresh process: `distlab run` (vectorized, the default executor of
    one worker) or this file's child running the plain loop."""
    with tempfile.TemporaryDirectory() as out:
        if variant == "vectorized":
            cmd = cli_command(rounds, out)
        else:
            cmd = [sys.executable, __file__, "--child", "loop", "--rounds", str(rounds)]
        env = dict(os.environ, COLUMNS="100")
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        return time.perf_counter() - start


def flower_run(rounds: int) -> tuple[float, float]:
    """A fresh process running the FedAvg on Flower's simulation engine: (its steady round,
    its wall seconds)."""
    cmd = [sys.executable, str(Path(__file__).with_name("flower_fedavg.py"))]
    start = time.perf_counter()
    done = subprocess.run(cmd + ["--rounds", str(rounds)], check=True, capture_output=True)
    seconds = time.perf_counter() - start
    return steady(json.loads(done.stdout.splitlines()[-1])["durations"]), seconds


def flower_missing() -> str | None:
    """Why the Flower baseline cannot run here, or None."""
    missing = [m for m in ("flwr", "ray") if importlib.util.find_spec(m) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


def measure(
    rounds: int, accuracy_rounds: int, repeats: int, processes: bool, flower: bool = False
) -> dict:
    """Interleaved repeats; every figure's median and the median of its paired ratio."""
    torch.set_num_threads(2)
    steady_variants = {"plain loop": "loop", "vectorized executor": "vectorized"}
    steady_variants["sequential executor"] = "sequential"
    if processes:
        steady_variants["processes executor (2 hosts)"] = "processes"
    samples: dict[str, list[float]] = {}
    load_before = os.getloadavg()
    for _ in range(repeats):
        for name, variant in steady_variants.items():
            samples.setdefault(f"{name} round", []).append(steady_round(variant, rounds))
        for name, variant in (("plain loop", "loop"), ("vectorized executor", "vectorized")):
            seconds = whole_process_seconds(variant, rounds)
            samples.setdefault(f"{name} process", []).append(seconds)
        if flower:
            steady_s, seconds = flower_run(rounds)
            samples.setdefault("Flower simulation (Ray) round", []).append(steady_s)
            samples.setdefault("Flower simulation (Ray) process", []).append(seconds)
    report: dict = {"threads": torch.get_num_threads(), "repeats": repeats, "rows": {}}
    for key, values in samples.items():
        what = key.rsplit(" ", 1)[1]
        base = samples[f"plain loop {what}"]
        report["rows"][key] = {
            "median_s": round(statistics.median(values), 4),
            "ratio_to_loop": round(statistics.median(np.divide(values, base)), 3),
            "all_s": [round(v, 4) for v in values],
        }
    report["load"] = {"before": load_before, "after": os.getloadavg()}
    report["accuracy"] = run_executor("vectorized", accuracy_rounds)["accuracy"]
    return report


def markdown(report: dict, rounds: int, accuracy_rounds: int) -> str:
    rows = report["rows"]
    flower = "Flower simulation (Ray) round" in rows
    before, after = (", ".join(f"{v:.2f}" for v in report["load"][k]) for k in ("before", "after"))
    lines = [
        "## federated",
        "",
        f"`python bench/federated.py{' --flower' if flower else ''} --write`: FedAvg, "
        "mnist-sample IID over 100 clients of 40,",
        f"LeNet, 10 clients per round, E=1, B=10, SGD lr 0.05, {report['threads']} torch threads,",
        f"shared 2-core machine, load average {before} before, {after} after the timed runs.",
        f"Medians of {report['repeats']} interleaved repeats; a ratio is the median of each",
        "repeat's ratio to the plain loop (the same work written directly in PyTorch) of the",
        "same repeat.",
        "",
        "| measure | median s | ratio to the plain loop |",
        "|---|---|---|",
    ]
    for key, row in rows.items():
        name = key.replace(" round", ": steady round").replace(
            " process", f": whole {rounds}-round process"
        )
        lines.append(f"| {name} | {row['median_s']} | {row['ratio_to_loop']} |")
    vec_round = rows["vectorized executor round"]["median_s"]
    vec_process = rows["vectorized executor process"]["median_s"]
    lines += [
        "",
        f"Test accuracy after {accuracy_rounds} rounds (vectorized executor): "
        f"{report['accuracy']}.",
        "",
        f"Goals: steady round <= {GOAL_ROUND_S} s: {verdict(vec_round <= GOAL_ROUND_S)}; whole "
        f"{rounds}-round process (`distlab run`, default settings) <= {GOAL_PROCESS_S} s: "
        f"{verdict(vec_process <= GOAL_PROCESS_S)}; accuracy >= 0.92: "
        f"{verdict(report['accuracy'] >= 0.92)}.",
        "",
    ]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "not met"


def write_section(text: str) -> None:
    """Replace (or append) the generated part of the '## federated' section (its heading to
    its "Goals:" line), keeping the notes under it and every other section."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = old.find("## federated")
    if start < 0:
        RESULTS.write_text(old.rstrip("\n") + "\n\n" + text)
        return
    goals = old.find("\nGoals: ", start)
    next_section = old.find("\n## ", start + 1)
    if goals < 0 or 0 <= next_section < goals:
        end = next_section  # no generated part to find: replace the whole section
    else:
        end = old.find("\n", goals + 1)
    rest = old[end + 1 :] if end >= 0 else ""
    RESULTS.write_text(old[:start] + text + rest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--accuracy-rounds", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", action="store_true", help="Add the processes executor.")
    parser.add_argument("--flower", action="store_true", help="Add Flower's simulation engine.")
    parser.add_argument("--write", action="store_true", help="Update bench/RESULTS.md.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_loop(args.rounds)
        gc.freeze()  # the exit distlab's CLI takes: no half-second collection at shutdown
        return
    flower = args.flower
    if flower and (why := flower_missing()):
        print(f"Flower baseline skipped ({why}; pip install -e '.[deploy,tune]')")
        flower = False
    report = measure(args.rounds, args.accuracy_rounds, args.repeats, args.processes, flower)
    print(json.dumps(report, indent=2))
    text = markdown(report, args.rounds, args.accuracy_rounds)
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
