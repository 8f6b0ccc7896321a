"""N-way data parallel is the same computation as centralized SGD (real gloo groups)."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import final_state, run_small, step_losses


def assert_same_run(a, b, tol: float = 1e-4) -> None:
    la, lb = step_losses(a), step_losses(b)
    assert len(la) == len(lb) >= 50
    assert max(abs(x - y) for x, y in zip(la, lb, strict=True)) < tol
    sa, sb = final_state(a), final_state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.allclose(sa[key], sb[key], atol=tol, rtol=0), key


@pytest.fixture(scope="module")
def centralized(tmp_path_factory):
    return run_small(tmp_path_factory.mktemp("central"), strategy="centralized")


@pytest.mark.parametrize("workers", [2, 4])
def test_allreduce_equals_centralized(tmp_path, centralized, workers):
    result = run_small(tmp_path, strategy="allreduce", workers=workers)
    assert result.summary["processes"] == workers
    assert_same_run(centralized, result)


def test_param_server_sync_equals_centralized(tmp_path, centralized):
    result = run_small(tmp_path, strategy={"name": "param-server"}, workers=2)
    assert result.summary["processes"] == 3
    assert_same_run(centralized, result)


def test_ddp_agrees_with_allreduce(tmp_path):
    ddp = run_small(tmp_path / "d", strategy="ddp", workers=2)
    allreduce = run_small(tmp_path / "a", strategy="allreduce", workers=2)
    assert_same_run(ddp, allreduce)


@pytest.mark.parametrize("strategy", ["allreduce", "param-server"])
def test_measured_bytes_match_the_formula(tmp_path, strategy):
    summary = run_small(tmp_path, strategy=strategy, workers=2).summary
    measured, analytic = summary["bytes_per_step_measured"], summary["bytes_per_step_analytic"]
    assert analytic == 2 * summary["params"] * 4
    assert abs(measured - analytic) / analytic < 0.01


def test_param_server_reports_server_load(tmp_path):
    summary = run_small(tmp_path, strategy="param-server", workers=3).summary
    server = summary["server_bytes_per_step_measured"]
    assert abs(server - 3 * summary["bytes_per_step_analytic"]) / server < 0.01


def test_async_param_server_reports_staleness(tmp_path):
    result = run_small(
        tmp_path,
        strategy={"name": "param-server", "mode": "async", "max_staleness": 0},
        workers=2,
    )
    steps = [e for e in result.events if e["kind"] == "step" and e["rank"] == 0]
    assert {e["worker"] for e in steps} == {1, 2}
    assert all(e["staleness"] >= 0 for e in steps)
    dropped = [e for e in steps if e["dropped"]]
    assert all(e["staleness"] > 0 for e in dropped)
    assert result.summary["final_accuracy"] > 0.5


@pytest.mark.parametrize("sampler", ["random", "balanced"])
def test_uneven_shards_do_not_hang(tmp_path, sampler):
    # 2000 samples over 3 workers do not divide; the samplers pad so all ranks step together.
    result = run_small(tmp_path, strategy="allreduce", workers=3, sampler=sampler, timeout=20)
    assert result.summary["status"] == "completed"
    assert result.summary["batch_size_meaning"] == "per worker"
    per_rank = -(-2000 // 3)  # padded to ceil(2000 / 3) samples per rank
    assert result.summary["steps"] == -(-per_rank // 32)


def test_ddp_fp16_compression_halves_the_payload(tmp_path):
    summary = run_small(
        tmp_path, strategy={"name": "ddp", "fp16": True, "bucket_mb": 1}, workers=2
    ).summary
    analytic = summary["bytes_per_step_analytic"]
    assert analytic == summary["params"] * 4  # 2 * P * 2 bytes
    # the logged loss adds one 8-byte allreduce (16 bytes in and out) per step
    assert abs(summary["bytes_per_step_measured"] - analytic - 16) / analytic < 0.01
    assert summary["final_accuracy"] > 0.5
