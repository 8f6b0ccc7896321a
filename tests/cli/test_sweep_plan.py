"""`distlab sweep` without running cells: the plan (grid points multiply, explicit cells
combine with them, strategy keys go where they apply), --dry-run, and bad input refused in
one line before anything is written."""

from __future__ import annotations

import pytest
from tests.conftest import REPO, cli

from distlab.config import build_data
from distlab.experiments.sweep import (
    cell_config,
    cell_name,
    expand,
    parse_grid,
    plan_sweep,
    read_sweep_file,
)

TINY = ["--dataset", "synthetic", "--model", "mlp", "--epochs", "1"]


def test_dry_run_lists_the_cells_and_writes_nothing(tmp_path):
    done = cli(
        "sweep", "--out-dir", str(tmp_path), "--grid", "workers=1,2", "--grid", "seed=0,1",
        "--dry-run", "--strategy", "allreduce", *TINY,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    for name in ("workers-1_seed-0", "workers-1_seed-1", "workers-2_seed-0", "workers-2_seed-1"):
        assert name in done.stdout
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--grid", "wrokers=1,2"], "unknown field 'wrokers' in --grid"),
        (["--grid", "workers="], "--grid 'workers=' has no values"),
        (["--grid", "workers=1,0"], "cell workers-0: workers"),
        (["--grid", "strategy=allreduce,nope"], "cell nope: unknown strategy.name 'nope'"),
        (["--grid", "name=a,b"], "--grid cannot set 'name'"),
        (["--grid", "workers=1", "--jobs", "0"], "--jobs must be >= 1 (got 0)"),
        (["--grid", "workers=1", "--set", "strategy.period=4"], "strategy.period"),
        (["--grid", "workers=1", "--repeats", "0"], "--repeats must be an integer from 1 to 100"),
        (["--grid", "workers=1", "--repeats", "1000"], "(got 1000)"),
    ],
    ids=[
        "unknown-field",
        "no-values",
        "bad-value",
        "bad-strategy",
        "reserved",
        "jobs",
        "unused",
        "repeats-0",
        "repeats-1000",
    ],  # fmt: skip
)
def test_bad_input_is_one_line_and_nothing_is_written(tmp_path, args, said):
    done = cli("sweep", "--out-dir", str(tmp_path / "sw"), *args, *TINY)

    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and said in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "sw").exists()


# --- planning, without running -----------------------------------------------------------------


def test_grid_points_multiply_and_explicit_cells_combine_with_them():
    grid = [parse_grid("workers=1,2"), parse_grid("seed=0,1")]
    cells = [{"strategy": "allreduce"}, {"strategy": "fedavg", "alpha": 0.1}]

    got = expand(grid, cells)

    assert len(got) == 8
    assert got[0] == {"strategy.name": "allreduce", "workers": 1, "seed": 0}
    assert got[-1] == {"strategy.name": "fedavg", "partition.alpha": 0.1, "workers": 2, "seed": 1}
    assert cell_name(got[-1]) == "fedavg_alpha-0.1_workers-2_seed-1"


def test_base_strategy_keys_apply_only_to_strategies_that_take_them():
    base = {"strategy": {"name": "local-sgd", "period": "end"}}

    local, dropped_local = cell_config(base, {"workers": 2})
    other, dropped_other = cell_config(base, {"strategy.name": "allreduce"})

    assert local["strategy"] == {"name": "local-sgd", "period": "end"} and not dropped_local
    assert other["strategy"] == {"name": "allreduce"} and dropped_other == {"strategy.period"}


def test_a_plan_validates_every_cell_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match=r"^cell lr--1: "):
        plan_sweep({"dataset": "synthetic"}, ["lr=0.1,-1"], out_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_repeats_run_every_cell_again_interleaved(tmp_path):
    base = {"strategy": "allreduce", "dataset": "synthetic", "model": "mlp", "epochs": 1}

    plan = plan_sweep(base, ["workers=1,2"], out_dir=tmp_path, repeats=3, check_inputs=False)

    assert [c.name for c in plan.cells] == [f"workers-{w}_r{r}" for r in (1, 2, 3) for w in (1, 2)]
    assert [c.repeat for c in plan.cells] == [1, 1, 2, 2, 3, 3]
    assert {c.config["name"] for c in plan.cells} == {c.name for c in plan.cells}
    # repeats are the same work: their configs differ only in their names
    first, again = plan.cells[1].config, plan.cells[3].config
    assert {k: v for k, v in first.items() if k != "name"} == {
        k: v for k, v in again.items() if k != "name"
    }


def test_cells_of_different_process_counts_get_the_same_threads(tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    base = {"strategy": "param-server", "dataset": "synthetic", "model": "mlp", "epochs": 1}

    plan = plan_sweep(base, ["workers=1,3"], out_dir=tmp_path, check_inputs=False)
    fixed = plan_sweep({**base, "threads": 3}, ["workers=1,3"], out_dir=tmp_path / "f",
                       check_inputs=False)  # fmt: skip

    assert [c.processes for c in plan.cells] == [2, 4]
    assert [c.config["threads"] for c in plan.cells] == [2, 2]  # 8 cores // 4 processes
    assert [c.config["threads"] for c in fixed.cells] == [3, 3]  # set by hand: kept


RECIPES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_plans_its_cells(tmp_path, recipe):
    """Each examples/ sweep file is a valid plan: every cell checked by the same preflight a
    real sweep makes (configs, strategies' rules, compressors), nothing run or written."""
    spec = read_sweep_file(recipe)

    plan = plan_sweep(build_data(start=spec.get("base")), [], spec, out_dir=tmp_path)

    assert len(plan.cells) >= 2
    assert not any(tmp_path.iterdir())
