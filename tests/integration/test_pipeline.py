"""Pipeline model parallelism (GPipe, 1F1B on torch's pipelining engine; the seed's RPC
driver) is the same computation as centralized SGD, on real process groups, and reports
its bubble and cut bytes beside their formulas."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import cli, final_state, run_small

from distlab.strategies.pipeline.split import balanced_plan

# One epoch of mnist-sample, lenet: 125 steps of 32. Measured (seed 0): every schedule and
# stage count reaches the centralized run's 0.552 test accuracy.
ACCURACY_FLOOR = 0.5


def run_pipeline(tmp_path, schedule: str, stages: int, **strategy):
    return run_small(
        tmp_path,
        strategy={"name": "pipeline", "schedule": schedule, "microbatches": 4, **strategy},
        workers=stages,
        dataset="mnist-sample",
        model="lenet",
    )


def lead_losses(result) -> list[float]:
    lead = result.summary["lead_rank"]
    return [e["loss"] for e in result.events if e["kind"] == "step" and e["rank"] == lead]


@pytest.fixture(scope="module")
def centralized(tmp_path_factory):
    return run_small(
        tmp_path_factory.mktemp("central"),
        strategy="centralized",
        dataset="mnist-sample",
        model="lenet",
    )


@pytest.mark.parametrize(
    ("schedule", "stages", "processes"), [("gpipe", 2, 2), ("1f1b", 3, 3), ("rpc", 2, 3)]
)
def test_schedule_equals_centralized_and_reports_its_pipeline(
    tmp_path, centralized, schedule, stages, processes
):
    result = run_pipeline(tmp_path, schedule, stages)

    summary = result.summary
    assert summary["status"] == "completed"
    assert summary["processes"] == processes
    # the same gradients every step: the same losses and the same final weights
    ours, theirs = lead_losses(result), lead_losses(centralized)
    assert len(ours) == len(theirs) == 125
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 1e-5
    mine, reference = final_state(result), final_state(centralized)
    assert mine.keys() == reference.keys()
    for key in mine:
        assert torch.allclose(mine[key], reference[key], atol=1e-5, rtol=0), key
    assert summary["final_accuracy"] >= ACCURACY_FLOOR
    assert summary["bubble_analytic"] == pytest.approx((stages - 1) / (4 + stages - 1), abs=1e-6)
    assert all(0 <= share < 1 for share in summary["bubble_measured_per_stage"])
    assert 0 <= summary["bubble_measured"] < 1
    # 256 (conv part) and, with 3 stages, 120 (after fc1) floats per sample cross the cuts
    assert summary["cuts"] == ([2] if stages == 2 else [2, 3])
    analytic = summary["bytes_per_step_analytic"]
    assert analytic == 2 * 4 * 32 * (256 if stages == 2 else 256 + 120)
    assert abs(summary["bytes_per_step_measured"] - analytic) / analytic < 0.02


def test_split_by_time_runs_and_cuts_at_a_boundary(tmp_path):
    result = run_pipeline(tmp_path, "gpipe", 2, split="time")

    assert result.summary["status"] == "completed"
    assert result.summary["cuts"][0] in (1, 2, 3, 4)
    assert result.summary["final_accuracy"] >= ACCURACY_FLOOR


def test_split_by_params_balances_the_largest_stage():
    lenet = [156, 2416, 30840, 10164, 850]  # parameters of its five pieces on MNIST

    assert balanced_plan(lenet, 2).cuts == (3,)  # 33412 | 11014, not 2572 | 41854
    assert balanced_plan(lenet, 3).cuts == (2, 3)
    assert balanced_plan(lenet, 5).cuts == (1, 2, 3, 4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "6"], "--workers 6 asks for 6 pipeline stages but model lenet can be cut"),
        (["--workers", "5"], "--workers 5 needs 4 cut points but model lenet declares 3"),
        (
            ["--workers", "2", "--set", "strategy.microbatches=5"],
            "strategy.microbatches (5) must divide --batch-size (32) (allowed: 1, 2, 4, 8",
        ),
        (
            ["--workers", "2", "--set", "strategy.schedule=zigzag"],
            "strategy.schedule must be one of gpipe, 1f1b or rpc (got 'zigzag')",
        ),
        (
            [
                "--workers",
                "3",
                "--set",
                "strategy.schedule=1f1b",
                "--set",
                "strategy.microbatches=2",
            ],
            "strategy.microbatches (2) must be >= --workers (3) under schedule 1f1b",
        ),
        (
            ["--workers", "2", "--set", "strategy.schedule=rpc", "--set", "fault.rank=1"],
            "fault.rank 1 under schedule rpc: stages only answer the driver's calls",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    proc = cli("run", "--strategy", "pipeline", *args, "--out-dir", str(tmp_path), timeout=60)

    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # refused before anything was written
