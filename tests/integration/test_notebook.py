"""examples/seed000.ipynb runs top to bottom on a real Jupyter kernel: every cell without an
error, its figures inline, its runs (two of them with 2 worker processes started from a
kernel cell) completed with the accuracy its commentary describes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest
from tests.conftest import REPO

NOTEBOOK = REPO / "examples" / "seed000.ipynb"

# The cells whose outputs must hold a figure (their metadata tags), and the runs they write.
FIGURES = [
    "figure-partition-iid",
    "figure-partition-noniid",
    "figure-curves",
    "figure-comparison",
    "figure-communication",
]
RUNS = ["centralized", "allreduce", "param-server", "fedavg-iid", "fedavg-dirichlet"]

# Appended to the notebook here, not saved in it: which interpreter and distlab the kernel ran.
PROBE = "import sys, distlab\nprint(sys.executable)\nprint(distlab.__file__)"


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> tuple[dict, Path]:
    """The notebook as executed in a fresh working directory, and that directory."""
    cwd = tmp_path_factory.mktemp("notebook")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(PROBE))
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=300,
        resources={"metadata": {"path": str(cwd)}},
    )

    client.execute()

    return notebook, cwd


def outputs_of(notebook, tag: str) -> list[dict]:
    (cell,) = [c for c in notebook.cells if tag in c.metadata.get("tags", [])]
    return cell.outputs


def test_the_saved_notebook_is_clean():
    notebook = nbformat.read(NOTEBOOK, as_version=4)

    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert notebook.metadata.kernelspec.name == "python3"


def test_the_kernel_runs_this_environments_python(executed):
    notebook, _ = executed

    text = "".join(o.get("text", "") for o in notebook.cells[-1].outputs)

    executable, module = text.split()
    assert Path(executable) == Path(sys.executable)
    assert Path(module).is_relative_to(REPO / "src")


def test_every_cell_ran_without_error(executed):
    notebook, _ = executed

    code = [c for c in notebook.cells if c.cell_type == "code"]

    assert all(c.execution_count is not None for c in code)
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert errors == []
    stderr = "".join(o.text for c in code for o in c.outputs if o.get("name") == "stderr")
    assert "Traceback" not in stderr, stderr


@pytest.mark.parametrize("tag", FIGURES)
def test_each_figure_is_shown_inline(executed, tag):
    notebook, _ = executed

    images = [o for o in outputs_of(notebook, tag) if "image/png" in o.get("data", {})]

    assert len(images) == 1
    assert len(images[0]["data"]["image/png"]) > 10_000  # base64 of a real plot, not a stub


def test_runs_completed_under_the_working_directory_with_sane_accuracy(executed):
    _, cwd = executed
    out = cwd / "runs" / "seed000"

    summaries = {name: json.loads((out / name / "summary.json").read_text()) for name in RUNS}

    assert all(s["status"] == "completed" for s in summaries.values())
    assert [summaries[n]["processes"] for n in RUNS] == [1, 2, 3, 3, 3]
    accuracy = {name: s["final_accuracy"] for name, s in summaries.items()}
    # allreduce and the parameter server compute centralized SGD: the same accuracy
    assert accuracy["centralized"] > 0.85
    assert accuracy["allreduce"] == pytest.approx(accuracy["centralized"], abs=0.005)
    assert accuracy["param-server"] == pytest.approx(accuracy["centralized"], abs=0.005)
    # what the commentary says: FedAvg learns on IID data, and the Dirichlet(0.1) split hurts
    assert accuracy["fedavg-iid"] > 0.85
    assert 0.1 < accuracy["fedavg-dirichlet"] < accuracy["fedavg-iid"]
    assert (out / "report" / "curves.png").is_file()
    assert (out / "report" / "communication.png").is_file()
