"""Memory: peak resident memory of a FedAvg run against the clients it trains per round.

`distlab run --strategy fedavg --dataset synthetic-images --clients 10000` (LeNet, the
vectorized executor), each case a fresh process: 100 clients per round, all 10,000 per
round with the default strategy.aggregate_chunk, and all 10,000 in one chunk (the round
loop before chunking: one (10,000 x P) float32 tensor of updates, 1.78 GB for LeNet). Peak
memory is the child's own maximum resident set (os.wait4), beside the summary's peak_rss_mb.
The one-chunk case needs about 7 GB: it runs once, and only when that much is free.

    python bench/memory.py [--rounds 2] [--chunk N] [--skip-old]

Prints a markdown table, with the goal (10,000 per round: peak <= 1500 MB) met or not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

CLIENTS = 10_000
GOAL_MB = 1500
OLD_NEEDS_GB = 9  # the one-chunk case peaks near 7 GB; leave the machine some room


def run_case(out: Path, name: str, rounds: int, per_round: int, chunk: int | None) -> dict:
    """One fresh `distlab run`: its maximum resident set, summary figures and model."""
    command = [sys.executable, "-m", "distlab", "run", "--strategy", "fedavg", "--dataset",
               "synthetic-images", "--clients", str(CLIENTS), "--rounds", str(rounds),
               "--set", f"strategy.clients_per_round={per_round}", "--out-dir", str(out),
               "--name", name, "--json", "-q"]  # fmt: skip
    if chunk is not None:
        command += ["--set", f"strategy.aggregate_chunk={chunk}"]
    begin = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)  # the child's own rusage, not all children's
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = (out / f"{name}.log").read_text()[-2000:]
        raise SystemExit(f"case {name} failed (exit {child.returncode}):\n{tail}")
    summary = json.loads((out / name / "summary.json").read_text())
    return {
        "max_rss_mb": usage.ru_maxrss / 1024,  # Linux: KiB
        "peak_rss_mb": summary.get("peak_rss_mb"),
        "train_seconds": summary.get("train_seconds"),
        "wall_seconds": time.perf_counter() - begin,
        "model": out / name / "model.pt",
    }


def cases(args) -> list[tuple[str, int, int | None, str]]:
    """(name, clients per round, aggregate_chunk or None for the default, what it is)."""
    chunk = args.chunk
    shown = "default" if chunk is None else str(chunk)
    rows = [
        ("few", 100, chunk, f"100 per round, aggregate_chunk {shown}"),
        ("all", CLIENTS, chunk, f"10,000 per round, aggregate_chunk {shown}"),
    ]
    if not args.skip_old:
        rows.append(("old", CLIENTS, CLIENTS, "10,000 per round in one chunk (before)"))
    return rows


def model_gap(a: Path, b: Path) -> float:
    """Largest difference between two runs' final parameters."""
    import torch

    left, right = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return max(float((left[k] - right[k]).abs().max()) for k in left)


def measure(args) -> dict[str, dict]:
    got = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for name, per_round, chunk, label in cases(args):
            free_gb = psutil.virtual_memory().available / 2**30
            if name == "old" and free_gb < OLD_NEEDS_GB:
                got[name] = {"label": label, "skipped": f"only {free_gb:.1f} GB free"}
                continue
            got[name] = {"label": label, **run_case(out, name, args.rounds, per_round, chunk)}
            print(f"{label}: {got[name]['max_rss_mb']:.0f} MB", file=sys.stderr)
        if "model" in got.get("old", {}):
            got["all"]["gap"] = model_gap(got["all"]["model"], got["old"]["model"])
    return got


def table(got: dict[str, dict], rounds: int) -> list[str]:
    lines = [
        "| case | peak RSS MB (process) | summary peak_rss_mb | train s | goal |",
        "|---|---|---|---|---|",
    ]
    for name, row in got.items():
        if "skipped" in row:
            lines.append(f"| {row['label']} | not run: {row['skipped']} | | | |")
            continue
        goal = ""
        if name != "few":
            goal = f"<= {GOAL_MB} MB: {'met' if row['max_rss_mb'] <= GOAL_MB else 'not met'}"
        lines.append(
            f"| {row['label']} | {row['max_rss_mb']:.0f} | {row['peak_rss_mb']} "
            f"| {row['train_seconds']:.1f} | {goal} |"
        )
    if "gap" in got.get("all", {}):
        gap = got["all"]["gap"]
        lines += [
            "",
            f"Final model, chunked against one chunk after {rounds} rounds: largest parameter "
            f"difference {gap:.2e} (float rounding, carried through the rounds).",
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chunk", type=int, help="strategy.aggregate_chunk (default: its own)")
    parser.add_argument("--skip-old", action="store_true", help="Leave out the one-chunk case.")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1 (got {args.rounds})")
    load = os.getloadavg()
    got = measure(args)
    loads = ", ".join(f"{x:.2f}" for x in load)
    print(f"load average {loads}; {os.cpu_count()} cores; {args.rounds} rounds")
    print("\n".join(table(got, args.rounds)))


if __name__ == "__main__":
    main()
