"""The layout keeps its rules: imports go downward only, the run directory has one owner,
the experiments and run layers load no torch, and no module or function outgrows a reading."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from tests.unit.test_imports import SRC, import_graph, module_names

PACKAGE = SRC / "distlab"

# Layers that run inside a rank or build one: they never reach up to what starts or
# compares runs.
LOWER = (
    "distlab.strategies",
    "distlab.federated",
    "distlab.runtime",
    "distlab.data",
    "distlab.models",
    "distlab.training",
    "distlab.topology",
    "distlab.curvature",
    "distlab.metrics",
    "distlab.edge",
    "distlab.plots",
)
UPPER = ("distlab.cli", "distlab.api", "distlab.runs", "distlab.experiments", "distlab.deploy")

# Forbidden targets for each importer prefix.
RULES: dict[str, tuple[str, ...]] = {
    **{lower: UPPER + ("distlab.dashboard",) for lower in LOWER},
    "distlab.experiments": (
        "distlab.strategies",
        "distlab.runtime",
        "distlab.federated",
        "distlab.cli",
        "distlab.deploy",
        "distlab.dashboard",
    ),
    "distlab.runs": (
        "distlab.cli",
        "distlab.api",
        "distlab.experiments",
        "distlab.strategies",
        "distlab.federated",
        "distlab.deploy",
        "distlab.dashboard",
    ),
    "distlab.api": ("distlab.cli", "distlab.experiments", "distlab.dashboard"),
    "distlab.config": ("distlab.cli", "distlab.api", "distlab.runs", "distlab.experiments"),
    "distlab.dashboard": ("distlab.cli", "distlab.strategies", "distlab.runtime"),
}

# The names of the files a run directory holds; only runs/ spells them.
RUN_FILES = (
    "config.json",
    "summary.json",
    "events.jsonl",
    "partition.json",
    "partition.png",
    "model.pt",
    "resume.json",
    "fault.json",
    "elastic.json",
    "sweep.json",
    "tune.json",
    "repeats.json",
)
RUN_PATTERNS = [re.compile(rf"[\"']{re.escape(name)}[\"']") for name in RUN_FILES] + [
    re.compile(r"[\"']rank-[^\"']*\.jsonl"),  # events/rank-R.jsonl
    re.compile(r"(/|=)\s*[\"'](events|checkpoints|errors)[\"']"),  # the run's folders
]

STRATEGY_FILES = (
    "centralized",
    "allreduce",
    "ddp",
    "param_server",
    "fedavg",
    "local_sgd",
    "hogwild",
    "gossip",
    "distill",
)


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for importer, targets in sorted(graph.items()):
        for prefix, forbidden in RULES.items():
            if not within(importer, prefix):
                continue
            found += [
                f"{importer} -> {t}"
                for t in sorted(targets)
                if any(within(t, f) for f in forbidden)
            ]
    found += [
        f"{m} -> distlab.cli"
        for m, ts in sorted(graph.items())
        if not within(m, "distlab.cli")
        and m != "distlab.__main__"
        and any(within(t, "distlab.cli") for t in ts)
    ]
    return found


def test_upward_imports_are_found_in_a_hand_made_graph():
    graph = {"distlab.runtime.worker": {"distlab.api"}, "distlab.api": {"distlab.runtime"}}

    assert upward_imports(graph) == ["distlab.runtime.worker -> distlab.api"]


def test_no_upward_imports():
    assert upward_imports(import_graph()) == []


def test_runs_and_experiments_load_no_torch_when_imported():
    names = [
        n for n in module_names() if within(n, "distlab.runs") or within(n, "distlab.experiments")
    ]
    code = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "    assert 'torch' not in sys.modules, name\n"
    )

    done = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True)

    assert done.returncode == 0, done.stderr[-2000:]


def spelled_run_files(text: str) -> list[str]:
    return [p.pattern for p in RUN_PATTERNS if p.search(text)]


def test_the_file_name_check_sees_a_spelled_name():
    assert spelled_run_files('path = run_dir / "summary.json"') != []
    assert spelled_run_files("path = directory.summary_path(run_dir)") == []


def test_only_runs_spells_run_directory_file_names():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(PACKAGE / "runs"):
            continue
        if found := spelled_run_files(path.read_text()):
            offenders[str(path.relative_to(PACKAGE))] = found

    assert offenders == {}


def function_lengths() -> list[tuple[str, int]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append(
                    (f"{path.relative_to(PACKAGE)}:{node.name}", node.end_lineno - node.lineno + 1)
                )
    return found


def lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_no_module_over_500_lines():
    assert {
        str(p.relative_to(PACKAGE)): lines(p) for p in PACKAGE.rglob("*.py") if lines(p) > 500
    } == {}


def test_no_function_over_60_lines():
    assert [f for f in function_lengths() if f[1] > 60] == []


def test_cli_modules_under_400_lines():
    assert {p.name: lines(p) for p in (PACKAGE / "cli").glob("*.py") if lines(p) >= 400} == {}


def test_each_paradigm_is_one_file_under_350_lines():
    sizes = {name: lines(PACKAGE / "strategies" / f"{name}.py") for name in STRATEGY_FILES}

    assert {name: n for name, n in sizes.items() if n >= 350} == {}
