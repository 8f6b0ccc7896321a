"""Every module of distlab.federated imports alone in a fresh interpreter and loads no
strategy: the engine knows no strategy, and executors and the server share only types.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FEDERATED = Path(__file__).resolve().parents[2] / "src" / "distlab" / "federated"
MODULES = sorted(p.stem for p in FEDERATED.glob("*.py") if p.stem != "__init__")

# Prints the distlab.strategies modules that importing the module pulled in.
CHECK = """
import importlib, sys
importlib.import_module(sys.argv[1])
print(" ".join(sorted(m for m in sys.modules if m.startswith("distlab.strategies"))))
"""


def test_the_federated_package_has_its_engine_and_executors():
    expected = {"server", "types", "optimizers", "processes", "vectorized", "sequential"}

    assert expected <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_federated_module_imports_alone_and_loads_no_strategy(module):
    name = f"distlab.federated.{module}"

    done = subprocess.run(
        [sys.executable, "-c", CHECK, name], capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "", f"{name} imports {done.stdout.strip()}"
