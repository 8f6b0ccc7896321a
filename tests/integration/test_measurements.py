"""Every figure means what it says: repeatable runs, the environment on record, counted
stale gradients, fp16 wire bytes, NaN losses stopped, unknown figures null."""

from __future__ import annotations

import json
import os

import pytest
import torch
from tests.conftest import run_small

from distlab.runtime.launch import RunFailed

# Fields that measure time, the process or the machine, not the computation.
TIMING = {"seconds", "duration", "comm_seconds", "pid", "peak_rss_mb", "run", "machine"}


def computation(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in TIMING} for e in events]


@pytest.mark.parametrize("model", ["lenet", "cnn-dropout", "mlp", "logreg"])
def test_the_same_config_twice_gives_the_same_events(tmp_path, model):
    fields = dict(dataset="digits", model=model, epochs=1, batch_size=64)

    first = run_small(tmp_path / "a", **fields)
    second = run_small(tmp_path / "b", **fields)

    assert computation(first.events) == computation(second.events)
    assert first.summary["final_loss"] == second.summary["final_loss"]


def test_a_run_leaves_the_callers_generator_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)

    run_small(tmp_path, dataset="digits", model="cnn-dropout", epochs=1, batch_size=256)

    assert torch.equal(torch.rand(3), expected)


def test_summary_records_the_environment(tmp_path):
    result = run_small(tmp_path, strategy="allreduce", workers=2, threads=1)

    env = result.summary["environment"]
    assert env["threads_per_process"] == 1
    assert env["cores"] == os.cpu_count()
    assert env["torch"] == torch.__version__ and env["platform"]
    assert result.summary["seed"] == 0 and result.summary["run_dir"] == str(result.run_dir)
    assert 0 < result.summary["startup_seconds"] < result.summary["wall_seconds"]


def test_a_nan_loss_stops_the_run_and_names_step_and_rank(tmp_path):
    with pytest.raises(RunFailed, match=r"loss became (NaN|Inf) at step \d+ on rank \d"):
        run_small(tmp_path, strategy="allreduce", workers=2, optimizer={"lr": 1e30})

    summary = (next((tmp_path / "runs").iterdir()) / "summary.json").read_text()
    assert '"status": "failed"' in summary


def test_async_server_counts_the_stale_gradients_it_drops(tmp_path):
    strategy = {"name": "param-server", "mode": "async", "max_staleness": 0}

    result = run_small(tmp_path, strategy=strategy, workers=2, sampler="random")

    steps = [e for e in result.events if e["kind"] == "step" and e["rank"] == 0]
    dropped = sum(1 for e in steps if e["dropped"])
    assert result.summary["stale_gradients_dropped"] == dropped
    assert result.summary["steps"] == len(steps) - dropped
    assert result.summary["max_staleness_seen"] == max(e["staleness"] for e in steps)


def test_fp16_ddp_halves_the_ring_wire_bytes(tmp_path):
    plain = run_small(tmp_path / "a", strategy="ddp", workers=2)
    half = run_small(tmp_path / "b", strategy={"name": "ddp", "fp16": True}, workers=2)

    assert half.summary["ring_wire_bytes_per_step"] == plain.summary["ring_wire_bytes_per_step"] / 2
    assert half.summary["bytes_per_step_analytic"] == plain.summary["bytes_per_step_analytic"] // 2


def test_unknown_figures_are_null_not_zero(tmp_path):
    fault = {"rank": 0, "step": 1, "kind": "raise"}
    with pytest.raises(RunFailed):
        run_small(tmp_path, fault=fault)

    summary = json.loads((next((tmp_path / "runs").iterdir()) / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["final_accuracy"] is None and summary["train_seconds"] is None
    assert summary["samples_per_second"] is None
    assert summary.get("bytes_per_step_measured") is None
