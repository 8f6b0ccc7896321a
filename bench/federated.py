"""FedAvg speed and accuracy: a plain sequential PyTorch loop against the executors.

mnist-sample (4000 train images), IID over 100 clients of 40, LeNet; each round 10 clients
train E=1 epoch with B=10 (4 SGD steps, lr 0.05). Reported per variant: the steady seconds
per round (median over rounds 4..30, evaluation excluded), the wall seconds of a whole
30-round process (interpreter start, imports, data, training: a fresh subprocess), each the
best of --repeats interleaved runs as the machine is shared; and the test accuracy of the
vectorized executor after 150 rounds.

    python bench/federated.py [--rounds 30] [--accuracy-rounds 150] [--repeats 3] [--write]

--write puts the table in bench/RESULTS.md under "## federated" (other sections are kept).
"""

from __future__ import annotations

import argparse
import gc
import json
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
    """One api.run; returns its round durations and final accuracy."""
    from distlab.api import run

    with tempfile.TemporaryDirectory() as out:
        result = run(fed_config(executor, rounds, out, workers))
    durations = [e["duration"] for e in result.events if e["kind"] == "round"]
    return {"durations": durations, "accuracy": result.summary["final_accuracy"]}


def run_sequential(rounds: int) -> dict:
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


def child(variant: str, rounds: int) -> None:
    """What one fresh process runs for the whole-process timing."""
    if variant == "loop":
        run_sequential(rounds)
    else:
        run_executor(variant, rounds, workers=2 if variant == "processes" else 1)


def whole_process_seconds(variant: str, rounds: int) -> float:
    start = time.perf_counter()
    cmd = [sys.executable, __file__, "--child", variant, "--rounds", str(rounds)]
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def steady(durations: list[float]) -> float:
    return statistics.median(durations[3:] or durations)


# The sequential executor trains as the plain loop does (one client after another,
# torch.optim.SGD) but through distlab's round loop: the gap is the engine's own cost.
VARIANTS = {
    "sequential loop": "loop",
    "vectorized executor": "vectorized",
    "sequential executor": "sequential",
    "processes executor (2 hosts)": "processes",
}


def steady_round(variant: str, rounds: int) -> float:
    if variant == "loop":
        return steady(run_sequential(rounds)["durations"])
    workers = 2 if variant == "processes" else 1
    return steady(run_executor(variant, rounds, workers)["durations"])


def measure(rounds: int, accuracy_rounds: int, repeats: int) -> dict:
    """Interleaved repeats; the best of each measure is kept (the machine is shared)."""
    torch.set_num_threads(2)
    report: dict = {"threads": torch.get_num_threads()}
    for name in VARIANTS:
        report[name] = {"steady_round_s": float("inf"), "whole_process_s": float("inf")}
    for _ in range(repeats):
        for name, variant in VARIANTS.items():
            row = report[name]
            row["steady_round_s"] = min(row["steady_round_s"], steady_round(variant, rounds))
            row["whole_process_s"] = min(
                row["whole_process_s"], whole_process_seconds(variant, rounds)
            )
    for name in VARIANTS:
        row = report[name]
        row["steady_round_s"] = round(row["steady_round_s"], 4)
        row["whole_process_s"] = round(row["whole_process_s"], 2)
    report["accuracy"] = run_executor("vectorized", accuracy_rounds)["accuracy"]
    return report


def markdown(report: dict, rounds: int, accuracy_rounds: int) -> str:
    lines = [
        "## federated",
        "",
        "`python bench/federated.py --write`: FedAvg, mnist-sample IID over 100 clients of 40,",
        "LeNet, 10 clients per round, E=1, B=10, SGD lr 0.05, "
        f"{report['threads']} torch threads, shared 2-core machine, best of the repeats.",
        "",
        f"| variant | steady s/round | whole {rounds}-round process s |",
        "|---|---|---|",
    ]
    for name, row in report.items():
        if isinstance(row, dict):
            lines.append(f"| {name} | {row['steady_round_s']} | {row['whole_process_s']} |")
    vec = report["vectorized executor"]
    lines += [
        "",
        f"Test accuracy after {accuracy_rounds} rounds (vectorized executor): "
        f"{report['accuracy']}.",
        "",
        f"Goals: steady round <= 0.020 s: {verdict(vec['steady_round_s'] <= 0.020)}; whole "
        f"{rounds}-round process <= 2.2 s: {verdict(vec['whole_process_s'] <= 2.2)}; "
        f"accuracy >= 0.92: {verdict(report['accuracy'] >= 0.92)}.",
        "",
        "The rows of one table are measured interleaved, so compare them with each other: the",
        "shared machine's speed varies between runs by up to 1.5x (the sequential loop shows",
        "where a run stands; 0.053 s/round when the machine is quiet).",
        "",
        "Where the time goes: `import torch` alone takes 1-1.5 s here, and a process that",
        "imported torch spends about 0.5 s in its shutdown collection unless it freezes the",
        "collector first (distlab's CLI and this bench's child do). A vectorized step runs a",
        "grouped twin of the model: each convolution is one oneDNN convolution with",
        "groups = clients on channels-last input (B, clients * C, H, W) -- 2-4x faster than",
        "vmap's NCHW grouped convolution, whose backward took most of the old step -- and each",
        "linear layer one batched matmul; conv1, conv2 and their backward still take about",
        "half of a step. Of the whole process, besides torch: the distlab imports about 0.25 s,",
        "the 30 rounds 0.6 s, and partition.png (written for every run with several clients)",
        "0.65 s, half of it importing matplotlib; the plot now draws one outline per class",
        "instead of 1000 bars (0.4 s less). torch.func.grad and F.cross_entropy under vmap are",
        "avoided because they import torch._dynamo and sympy (about 3 s of start-up).",
        "",
    ]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "not met"


def write_section(text: str) -> None:
    """Replace (or append) the '## federated' section, keeping every other section."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = old.find("## federated")
    if start < 0:
        RESULTS.write_text(old.rstrip("\n") + "\n\n" + text)
        return
    end = old.find("\n## ", start + 1)
    rest = old[end + 1 :] if end >= 0 else ""
    RESULTS.write_text(old[:start] + text + ("\n" + rest if rest else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--accuracy-rounds", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="Update bench/RESULTS.md.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rounds)
        gc.freeze()  # the exit distlab's CLI takes: no half-second collection at shutdown
        return
    report = measure(args.rounds, args.accuracy_rounds, args.repeats)
    print(json.dumps(report, indent=2))
    text = markdown(report, args.rounds, args.accuracy_rounds)
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
