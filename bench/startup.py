"""Start-up: seconds from launching `distlab run` to its first training step.

Three commands, each a fresh process, measured interleaved (one of each per repeat, so a
busy moment of the shared machine hits all of them) and reported as medians:

- `python -c "import torch"`: the floor every command pays, timed from the process's
  creation to the end of the import;
- `distlab run --epochs 1` (centralized LeNet on mnist-sample, one process);
- `distlab run --epochs 1 --strategy allreduce --workers 2` (two spawned processes).

A run's figure is its summary's `startup_seconds`: from the command's process creation to
the lead rank's "train" phase, the moment its first step begins. The end of that first
step (the step event's `seconds`) is reported beside it. `--before SRC` also runs both
commands against another source tree (its `src/`, put first on PYTHONPATH), each right
next to the same command of this tree, so a change is measured before and after in one run.

    python bench/startup.py [--repeats 5] [--before /path/to/old/src] [--write]

--write appends the table, dated, under "## start-up" in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "RESULTS.md"
TORCH = (
    "import torch, time; t = time.time(); from distlab.runtime.environ import process_started; "
    "print(t - process_started())"
)
RUNS = {
    "distlab run": [],
    "distlab run --strategy allreduce --workers 2": ["--strategy", "allreduce", "--workers", "2"],
}
GOALS = {"distlab run": 1.1, "distlab run --strategy allreduce --workers 2": 2.0}


def time_torch_import(env: dict) -> float:
    """Seconds from a fresh interpreter's creation to the end of `import torch`."""
    out = subprocess.run(
        [sys.executable, "-c", TORCH], env=env, check=True, capture_output=True, text=True
    )
    return float(out.stdout)


def time_run(flags: list[str], env: dict, out: Path) -> tuple[float, float]:
    """One `distlab run --epochs 1 FLAGS` process: (start-up seconds, end of its first step)."""
    name = f"run-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "distlab", "run", "--epochs", "1", "--quiet"]
    command += ["--out-dir", str(out), "--name", name, *flags]
    subprocess.run(command, env=env, cwd=out, check=True, capture_output=True)
    run_dir = out / name
    summary = json.loads((run_dir / "summary.json").read_text())
    lead = summary["lead_rank"]
    with open(run_dir / "events.jsonl") as events:
        step = next(e for e in map(json.loads, events) if e["kind"] == "step" and e["rank"] == lead)
    return summary["startup_seconds"], step["seconds"]


def tree_env(src: str | None) -> dict:
    """The environment that runs this checkout's distlab, or the one in `src`."""
    env = dict(os.environ)
    if src is not None:
        path = str(Path(src).resolve())  # the runs start in a temporary directory
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")]))
    return env


def measure(repeats: int, before: str | None) -> dict[str, dict[str, list[float]]]:
    """Every variant's start-ups and first-step ends, `repeats` interleaved rounds."""
    trees = {"now": tree_env(None)} | ({"before": tree_env(before)} if before else {})
    got: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(repeats):
            got.setdefault("import torch", {"startup": [], "first_step": []})
            got["import torch"]["startup"].append(time_torch_import(trees["now"]))
            # the pair's order alternates, so neither tree always runs on the warmer cache
            order = list(trees.items())[:: 1 if repeat % 2 == 0 else -1]
            for command, flags in RUNS.items():
                for tree, env in order:
                    startup, step = time_run(flags, env, Path(tmp))
                    row = got.setdefault(variant_name(command, tree, before), {})
                    row.setdefault("startup", []).append(startup)
                    row.setdefault("first_step", []).append(step)
    return got


def variant_name(command: str, tree: str, before: str | None) -> str:
    return f"{command} ({tree})" if before else command


def command_of(variant: str) -> str:
    return variant.rsplit(" (", 1)[0]


def table(got: dict[str, dict[str, list[float]]]) -> list[str]:
    """Markdown rows: medians, the spread, and the goal where the command has one."""
    lines = [
        "| command | start-up s (median) | min-max | first step done s | goal |",
        "|---|---|---|---|---|",
    ]
    for name, row in got.items():
        startup, steps = row["startup"], row["first_step"]
        goal = GOALS.get(command_of(name))
        verdict = "" if goal is None else f"<= {goal} s: {met(median(startup) <= goal)}"
        done = f"{median(steps):.3f}" if steps else ""
        command = command_of(name)
        lines.append(
            f"| `{command}`{name[len(command) :]} | {median(startup):.3f} "
            f"| {min(startup):.2f}-{max(startup):.2f} | {done} | {verdict} |"
        )
    return lines


def paired_gains(got: dict[str, dict[str, list[float]]]) -> list[str]:
    """Per command, the median of (before - now) over the repeats' adjacent pairs."""
    lines = []
    for command in RUNS:
        now, old = got.get(f"{command} (now)"), got.get(f"{command} (before)")
        if now and old:
            gain = median([b - a for a, b in zip(now["startup"], old["startup"], strict=True)])
            lines.append(f"- `{command}`: {gain:.3f} s sooner (median of paired differences)")
    return lines


def beyond_torch(got: dict[str, dict[str, list[float]]]) -> list[str]:
    """Per command of this tree, the median over repeats of its start-up less the same
    repeat's `import torch`: what distlab itself adds, on any machine."""
    torch_import = got["import torch"]["startup"]
    lines = []
    for command in RUNS:
        row = got.get(command) or got.get(f"{command} (now)")
        extra = median([a - b for a, b in zip(row["startup"], torch_import, strict=True)])
        lines.append(f"- `{command}`: {extra:.3f} s beyond `import torch`")
    return lines


def met(ok: bool) -> str:
    return "met" if ok else "not met"


def median(values: list[float]) -> float:
    return statistics.median(values)


def markdown(rows: list[str], gains: list[str], repeats: int, load: float, before) -> str:
    stamp = time.strftime("%Y-%m-%d")
    cores = os.cpu_count()
    command = f"`python bench/startup.py --repeats {repeats}"
    command += " --before SRC` (the tree before a change beside this one)" if before else "`"
    lines = [
        f"### {stamp}, {cores} cores",
        "",
        *textwrap.wrap(
            f"{command}: medians of {repeats} interleaved repeats; the machine's load average "
            f"was {load:.2f} when it began.",
            width=90,
        ),
        "",
        *rows,
        "",
        *([*gains, ""] if gains else []),
    ]
    return "\n".join(lines)


SECTION_INTRO = """## start-up

`python bench/startup.py`: seconds from launching a command to its first training step
(`startup_seconds` of the run's summary: process creation to the lead rank's "train"
phase), next to `python -c "import torch"` (process creation to the end of the import)
measured in the same run. Each repeat runs every command once, in turn, in a fresh process;
the table gives medians. `distlab run` is centralized LeNet on mnist-sample, `--epochs 1`.

"""


def append_section(text: str, heading: str = "start-up", intro: str = SECTION_INTRO) -> None:
    """Add a dated entry at the end of the '## HEADING' section (made, with `intro`, if
    missing), leaving everything else as it is."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = old.find(f"\n## {heading}\n")
    if start < 0:
        RESULTS.write_text(old.rstrip("\n") + "\n\n" + intro + text)
        return
    end = old.find("\n## ", start + 1)
    end = len(old) if end < 0 else end + 1
    head, rest = old[:end].rstrip("\n"), old[end:]
    RESULTS.write_text(head + "\n\n" + text + ("\n" + rest if rest else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", help="another tree's src/ to run beside this one")
    parser.add_argument("--write", action="store_true", help="Append to bench/RESULTS.md.")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error(f"--repeats must be >= 3 for a median (got {args.repeats})")
    load = os.getloadavg()[0]
    got = measure(args.repeats, args.before)
    print(json.dumps(got))
    text = markdown(
        table(got), beyond_torch(got) + paired_gains(got), args.repeats, load, args.before
    )
    print(text)
    if args.write:
        append_section(text)


if __name__ == "__main__":
    main()
