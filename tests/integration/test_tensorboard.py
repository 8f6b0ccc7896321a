"""--tensorboard: real runs write scalar event files that TensorBoard's own reader reads back
with the values of events.jsonl and summary.json."""

from __future__ import annotations

import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tests.conftest import make_config, run_small

import distlab
from distlab.runtime.launch import RunFailed
from distlab.tensorboard import MISSING


def read_scalars(run_dir) -> dict[str, list]:
    """Tag -> its ScalarEvents (wall_time, step, value), as TensorBoard reads them."""
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def lead_events(result, kind: str) -> list[dict]:
    return [e for e in result.events if e["kind"] == kind and e["rank"] == 0]


def points(scalars: list) -> list[tuple[int, float]]:
    return [(s.step, s.value) for s in scalars]


def expected(events: list[dict], where: str, key: str) -> list[tuple[int, float]]:
    return [(e[where], pytest.approx(e[key], rel=1e-6)) for e in events]


def test_allreduce_run_writes_its_steps_evals_bytes_and_summary(tmp_path):
    result = run_small(
        tmp_path, strategy="allreduce", workers=2, threads=1, eval_every=10, tensorboard=True
    )

    scalars = read_scalars(result.run_dir)
    steps, evals = lead_events(result, "step"), lead_events(result, "eval")
    assert len(steps) == result.summary["steps"] > 10 and len(evals) >= 2
    assert points(scalars["train/loss"]) == expected(steps, "step", "loss")
    assert points(scalars["comm/bytes_sent"]) == expected(steps, "step", "bytes_sent")
    assert points(scalars["comm/bytes_recv"]) == expected(steps, "step", "bytes_recv")
    assert points(scalars["test/accuracy"]) == expected(evals, "step", "accuracy")
    assert points(scalars["test/loss"]) == expected(evals, "step", "loss")
    # each point sits at its event's time: the relative-time axis is the run's own clock
    walls = [s.wall_time for s in scalars["train/loss"]]
    seconds = [e["seconds"] for e in steps]
    assert [w - walls[0] for w in walls] == pytest.approx(
        [s - seconds[0] for s in seconds], abs=1e-6
    )
    for key in ("final_accuracy", "samples_per_second", "bytes_per_step_measured"):
        assert points(scalars[f"summary/{key}"]) == expected([result.summary], "steps", key)
    analytic = result.summary["bytes_per_step_analytic"]
    assert scalars["summary/bytes_per_step_analytic"][0].value == analytic


def test_fedavg_run_writes_one_point_per_round(tmp_path):
    strategy = {"name": "fedavg", "clients": 4, "rounds": 3}

    result = run_small(tmp_path, strategy=strategy, tensorboard=True)

    scalars = read_scalars(result.run_dir)
    rounds, evals = lead_events(result, "round"), lead_events(result, "eval")
    assert [e["round"] for e in rounds] == [1, 2, 3]
    assert points(scalars["train/loss"]) == expected(rounds, "round", "loss")
    assert points(scalars["test/accuracy"]) == expected(evals, "round", "accuracy")
    final = scalars["summary/final_accuracy"]
    assert points(final) == [(3, pytest.approx(result.summary["final_accuracy"], rel=1e-6))]


def test_failed_run_keeps_the_steps_it_made(tmp_path):
    cfg = make_config(
        tmp_path,
        strategy="allreduce",
        workers=2,
        threads=1,
        name="fails",
        tensorboard=True,
        fault={"rank": 1, "step": 5},
    )

    with pytest.raises(RunFailed, match="rank 1 failed"):
        distlab.run(cfg)

    result = distlab.load_run(tmp_path / "runs" / "fails")
    steps = lead_events(result, "step")
    assert result.summary["status"] == "failed" and len(steps) >= 4
    assert points(read_scalars(result.run_dir)["train/loss"]) == expected(steps, "step", "loss")


def test_run_without_the_flag_writes_no_tensorboard_files(tmp_path):
    result = run_small(tmp_path, model="logreg", name="plain")

    assert result.summary["status"] == "completed"
    assert not (result.run_dir / "tensorboard").exists()


def test_missing_package_is_refused_before_the_run(tmp_path, monkeypatch):
    # None in sys.modules is how Python marks a module that cannot be imported.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    cfg = make_config(tmp_path, tensorboard=True)

    with pytest.raises(ValueError) as err:
        distlab.run(cfg)

    assert str(err.value) == MISSING
    assert not (tmp_path / "runs").exists()


def test_cli_refuses_the_flag_without_the_package(tmp_path):
    blocked = "import sys; sys.modules['tensorboard'] = None; from distlab.cli import main; main()"
    out = tmp_path / "runs"

    proc = cli_blocked(blocked, "run", "--set", "tensorboard=true", "--out-dir", str(out))

    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {MISSING}"
    assert not out.exists()


def cli_blocked(code: str, *args: str):
    """`distlab ARGS` in an interpreter where the tensorboard package cannot be imported."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


def test_the_run_flag_writes_what_tensorboard_reads(tmp_path):
    from tests.conftest import cli

    done = cli(
        "run", "--tensorboard", "--dataset", "synthetic", "--model", "mlp", "--epochs", "1",
        "--out-dir", str(tmp_path), "--name", "tb", "--quiet",
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    scalars = read_scalars(tmp_path / "tb")
    assert len(scalars["train/loss"]) == 63 and "summary/final_accuracy" in scalars
