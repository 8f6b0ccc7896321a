"""Pipeline schedules: training throughput and measured bubble of gpipe, 1f1b and rpc.

LeNet on mnist-sample cut into 2 stages, 4 microbatches of a global batch of 32, one epoch,
one torch thread per process (rpc adds a driver process). Each repeat runs every schedule
once, in a fresh `distlab run`; the table gives medians of the summaries' training samples
per second and measured bubble. `--before SRC` also runs each schedule against another
source tree (its `src/`, first on PYTHONPATH), right next to the same run of this tree, so a
change is measured before and after in one run.

    python bench/pipeline.py [--repeats 3] [--before /path/to/old/src] [--write]

--write appends the table, dated, under "## pipeline" in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from startup import append_section, tree_env

SCHEDULES = ("gpipe", "1f1b", "rpc")


def run_schedule(schedule: str, env: dict, out: Path) -> dict:
    """One fresh `distlab run` of the schedule; its summary."""
    name = f"{schedule}-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "distlab", "run", "--strategy", "pipeline", "--workers", "2"]
    command += ["--epochs", "1", "--quiet", "--out-dir", str(out), "--name", name]
    for key, value in (("strategy.schedule", schedule), ("strategy.microbatches", 4)):
        command += ["--set", f"{key}={value}"]
    command += ["--set", "threads=1"]
    subprocess.run(command, env=env, cwd=out, check=True, capture_output=True)
    return json.loads((out / name / "summary.json").read_text())


def measure(repeats: int, before: str | None) -> dict[str, dict[str, list[float]]]:
    trees = {"now": tree_env(None)} | ({"before": tree_env(before)} if before else {})
    got: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(repeats):
            order = list(trees.items())[:: 1 if repeat % 2 == 0 else -1]
            for schedule in SCHEDULES:
                for tree, env in order:
                    summary = run_schedule(schedule, env, Path(tmp))
                    row = got.setdefault(f"{schedule} ({tree})" if before else schedule, {})
                    row.setdefault("samples_per_s", []).append(summary["samples_per_second"])
                    row.setdefault("bubble", []).append(summary["bubble_measured"])
                    row.setdefault("accuracy", []).append(summary["final_accuracy"])
    return got


def markdown(got: dict, repeats: int, load: float, before: str | None) -> str:
    against = " --before SRC" if before else ""
    lines = [
        f"### {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores",
        "",
        f"`python bench/pipeline.py --repeats {repeats}{against}`: medians of {repeats}",
        f"interleaved repeats; the machine's load average was {load:.2f} when it began.",
        "",
        "| schedule | samples/s | measured bubble | final accuracy |",
        "|---|---|---|---|",
    ]
    for name, row in got.items():
        med = {k: statistics.median(v) for k, v in row.items()}
        lines.append(
            f"| {name} | {med['samples_per_s']:.0f} | {med['bubble']:.3f} | {med['accuracy']:.4f} |"
        )
    return "\n".join(lines) + "\n"


SECTION_INTRO = """## pipeline

`python bench/pipeline.py`: LeNet on mnist-sample in 2 stages, 4 microbatches of a global
batch of 32, one epoch, one torch thread per process; training samples per second and the
measured bubble from each run's summary. The analytic bubble, (S-1)/(M+S-1), is 0.2.

"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", help="another tree's src/ to run beside this one")
    parser.add_argument("--write", action="store_true", help="Append to bench/RESULTS.md.")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1 (got {args.repeats})")
    load = os.getloadavg()[0]
    got = measure(args.repeats, args.before)
    print(json.dumps(got))
    text = markdown(got, args.repeats, load, args.before)
    print(text)
    if args.write:
        append_section(text, "pipeline", SECTION_INTRO)


if __name__ == "__main__":
    main()
