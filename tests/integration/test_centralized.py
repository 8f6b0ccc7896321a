"""Centralized runs end to end: the default command, its run record, show, datasets, help."""

from __future__ import annotations

import json

import pytest
from tests.conftest import cli, final_state, run_small, step_losses

import distlab
from distlab.cli import main
from distlab.config import FLAG_KEYS, OptimizerConfig, RunConfig, validate_config
from distlab.data.datasets import DATASETS

SUMMARY_KEYS = {
    "strategy", "dataset", "model", "params", "workers", "processes", "final_accuracy",
    "best_accuracy", "final_loss", "wall_seconds", "train_seconds", "samples_per_second",
    "steps", "bytes_per_rank",
}  # fmt: skip


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """`distlab run --json` with nothing else, in an empty directory (about 10 s)."""
    cwd = tmp_path_factory.mktemp("default")
    proc = cli("run", "--json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (cwd / "runs").iterdir()
    return proc, run_dir


def kind(events: list[dict], name: str) -> list[dict]:
    return [e for e in events if e["kind"] == name]


# ---------------------------------------------------------------- the default run


def test_default_run_learns_mnist_sample(default_run):
    proc, run_dir = default_run

    summary = json.loads((run_dir / "summary.json").read_text())

    assert summary["final_accuracy"] >= 0.85
    assert summary["status"] == "completed"
    assert run_dir.name.startswith("centralized-mnist-sample-lenet-")


def test_default_run_prints_summary_json_only(default_run):
    proc, run_dir = default_run

    assert json.loads(proc.stdout) == json.loads((run_dir / "summary.json").read_text())


def test_default_run_writes_its_config(default_run):
    _, run_dir = default_run

    config = json.loads((run_dir / "config.json").read_text())

    assert validate_config(config) == RunConfig()


def test_default_run_summary(default_run):
    _, run_dir = default_run

    summary = distlab.load_run(run_dir).summary

    assert SUMMARY_KEYS <= summary.keys()
    # 4000 training images, batch 32, 3 epochs: 125 steps an epoch
    assert summary["steps"] == 375 and summary["samples"] == 3 * 4000
    assert (summary["strategy"], summary["dataset"], summary["model"]) == (
        "centralized", "mnist-sample", "lenet"
    )  # fmt: skip
    assert (summary["params"], summary["workers"], summary["processes"]) == (44426, 1, 1)
    assert summary["wall_seconds"] > summary["train_seconds"] > 0
    expected_rate = summary["samples"] / summary["train_seconds"]
    assert summary["samples_per_second"] == pytest.approx(expected_rate, rel=1e-3)
    assert summary["bytes_per_rank"]["0"]["bytes_sent"] == 0


def test_default_run_events(default_run):
    _, run_dir = default_run

    result = distlab.load_run(run_dir)
    steps, evals = kind(result.events, "step"), kind(result.events, "eval")

    assert [e["step"] for e in steps] == list(range(1, 376))
    assert all({"loss", "samples", "seconds", "duration"} <= e.keys() for e in steps)
    assert sum(e["samples"] for e in steps) == 12000
    assert [e["seconds"] for e in steps] == sorted(e["seconds"] for e in steps)
    # one evaluation per epoch; the summary reads the last and the best of them
    assert [e["step"] for e in evals] == [125, 250, 375]
    assert all(0 <= e["accuracy"] <= 1 and e["loss"] > 0 for e in evals)
    assert result.summary["final_accuracy"] == evals[-1]["accuracy"]
    assert result.summary["final_loss"] == evals[-1]["loss"]
    assert result.summary["best_accuracy"] == max(e["accuracy"] for e in evals)


def test_show_prints_the_summary(default_run, capsys):
    _, run_dir = default_run
    summary = json.loads((run_dir / "summary.json").read_text())

    with pytest.raises(SystemExit) as info:
        main(["show", str(run_dir)])
    table = capsys.readouterr().out

    assert info.value.code == 0
    shown = f"{summary['final_accuracy']:.4f}".rstrip("0").rstrip(".")  # no trailing zeros
    assert "final accuracy" in table and f" {shown} " in table
    assert "lenet" in table and "44,426" in table


def test_show_json(default_run, capsys):
    _, run_dir = default_run

    with pytest.raises(SystemExit) as info:
        main(["show", str(run_dir), "--json"])

    assert info.value.code == 0
    assert json.loads(capsys.readouterr().out) == distlab.load_run(run_dir).summary


# ---------------------------------------------------------------- output modes and commands


TINY = ["--dataset", "synthetic", "--model", "logreg", "--epochs", "1", "--batch-size", "500"]


def test_quiet_prints_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", *TINY, "--out-dir", str(tmp_path), "--name", "q", "--quiet"])

    assert info.value.code == 0
    assert capsys.readouterr().out == ""
    assert (tmp_path / "q" / "summary.json").is_file()


def test_plain_run_prints_the_table(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["run", *TINY, "--out-dir", str(tmp_path), "--name", "t"])

    out = capsys.readouterr().out
    assert f"run directory: {tmp_path / 't'}" in out
    assert "final accuracy" in out and "synthetic" in out


def test_datasets_lists_every_dataset(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["datasets", "--json", "--data-dir", str(tmp_path)])
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}

    assert info.value.code == 0 and rows.keys() == DATASETS.keys()
    sample = rows["mnist-sample"]
    assert (sample["shape"], sample["classes"], sample["train"], sample["test"]) == (
        [1, 28, 28], 10, 4000, 1000
    )  # fmt: skip
    assert rows["synthetic"]["shape"] == [20]
    cancer = rows["breast-cancer"]
    assert (cancer["shape"], cancer["classes"], cancer["train"], cancer["test"]) == (
        [30], 2, 455, 114
    )  # fmt: skip
    assert "missing" in rows["mnist"] and str(tmp_path) in rows["mnist"]["missing"]


def test_run_help_lists_flags_with_field_docstrings(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    docs = {key: field.description for key, field in RunConfig.model_fields.items()}
    docs |= {f"optimizer.{k}": f.description for k, f in OptimizerConfig.model_fields.items()}

    with pytest.raises(SystemExit) as info:
        main(["run", "--help"])
    text = capsys.readouterr().out

    # help lines wrap anywhere, so compare with all whitespace removed
    squeezed = "".join(text.split())
    assert info.value.code == 0
    for flag, key in FLAG_KEYS.items():
        assert f"--{flag.replace('_', '-')}" in text
        if key in docs:
            assert "".join(docs[key].split()) in squeezed, key
    for flag in ("--config", "--set", "--json", "--quiet", "--overwrite"):
        assert flag in text


# ---------------------------------------------------------------- Python API and determinism


def test_api_run_and_load_run(tmp_path):
    result = distlab.run({"dataset": "synthetic", "model": "logreg", "out_dir": str(tmp_path)})

    loaded = distlab.load_run(result.run_dir)

    assert result.summary == loaded.summary and result.events == loaded.events
    assert result.summary["steps"] == len(kind(result.events, "step")) == 3 * 63
    assert result.config == json.loads((result.run_dir / "config.json").read_text())


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    first = run_small(tmp_path / "a", seed=5, batch_size=100)
    again = run_small(tmp_path / "b", seed=5, batch_size=100)
    other = run_small(tmp_path / "c", seed=6, batch_size=100)

    assert len(step_losses(first)) == 20
    assert step_losses(first) == step_losses(again)
    assert step_losses(first) != step_losses(other)
    state, state_again = final_state(first), final_state(again)
    assert state.keys() == state_again.keys()
    assert all(state[k].equal(state_again[k]) for k in state)
    assert (first.run_dir / "model.pt").read_bytes() == (again.run_dir / "model.pt").read_bytes()


def test_strategies_lists_each_strategys_keys(capsys):
    from distlab.cli import main
    from distlab.strategies import params_for

    with pytest.raises(SystemExit) as done:
        main(["strategies", "param-server"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    for key in params_for("param-server").model_fields:
        if key != "name":
            assert f"strategy.{key}" in shown


def test_strategies_refuses_an_unknown_name(capsys):
    from distlab.cli import main

    with pytest.raises(SystemExit) as done:
        main(["strategies", "nope"])
    assert done.value.code == 2
    assert "unknown strategy 'nope'" in capsys.readouterr().err
