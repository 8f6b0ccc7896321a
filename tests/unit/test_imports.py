"""Import hygiene: every module imports alone, no import cycles, the config layer is light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def module_names() -> list[str]:
    names = []
    for path in sorted((SRC / "distlab").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def module_imports(path: Path, name: str) -> set[str]:
    """distlab modules that `name` imports anywhere, at module level or inside a function
    (a lazy import closes a circle as surely), except under `if TYPE_CHECKING:`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("distlab")}


def import_graph() -> dict[str, set[str]]:
    names = set(module_names())
    graph = {}
    for name in names:
        path = SRC / Path(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        graph[name] = {m for m in module_imports(path, name) if m in names and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_module_imports_sees_lazy_imports_but_not_typing_ones(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from distlab.api import run\n"
        "def f():\n    from distlab.experiments.report import write_report\n"
    )

    found = module_imports(path, "distlab.m")

    assert "distlab.experiments.report" in found and "distlab.api" not in found


def test_find_cycle_finds_a_hand_made_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_distlab_modules():
    assert find_cycle(import_graph()) is None


# Imported once up front, so each fork pays only for distlab's own modules.
CHECK_EACH = """
import os, sys, importlib, traceback
import numpy, torch, pydantic, matplotlib, typer, rich, yaml
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if status:
        failed.append(name)
print(" ".join(failed))
"""


def test_every_module_imports_alone_in_a_fresh_interpreter():
    names = [n for n in module_names() if n != "distlab.__main__"]

    done = subprocess.run(
        [sys.executable, "-c", CHECK_EACH, *names], capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "", f"{done.stdout.strip()}\n{done.stderr[-3000:]}"


def test_importing_the_config_does_not_load_torch():
    code = "import sys, distlab.config, distlab.strategies; print('torch' in sys.modules)"

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    assert done.stdout.strip() == "False", done.stderr
