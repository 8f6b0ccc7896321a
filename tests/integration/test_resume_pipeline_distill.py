"""Pipeline (gpipe, 1f1b, rpc) and distill runs stopped after a checkpoint and resumed end
exactly where an uninterrupted run with the same seed ends: the same per-step losses, each
once, the same evaluations, the same final weights."""

from __future__ import annotations

import pytest
import torch
from tests.integration.test_resume import (
    assert_same_run,
    config,
    trajectory,
)

from distlab.api import run
from distlab.runtime.launch import RunFailed


def pipeline(schedule: str, microbatches: int = 4) -> dict:
    return {"name": "pipeline", "schedule": schedule, "microbatches": microbatches}


def distill(**params) -> dict:
    return {"name": "distill", "target_model": "mlp", "member_epochs": 1, **params}


# case -> (config fields, the rank that dies, at its step, the checkpoint resumed from).
# Synthetic data: 2000 samples, 63 global batches of 32 an epoch.
CASES = {
    # the first stage dies; the lead (last stage) loses its peer mid-step
    "gpipe": ({"strategy": pipeline("gpipe"), "workers": 2, "epochs": 1}, 0, 25, 20),
    # the lead dies; momentum buffers and an off-epoch eval cadence carry over
    "1f1b": (
        {
            "strategy": pipeline("1f1b"),
            "workers": 3,
            "epochs": 1,
            "optimizer": {"momentum": 0.9},
            "eval_every": 7,
        },
        2,
        25,
        20,
    ),
    # the driver dies; each stage sums its microbatches' gradients in their order
    "rpc": (
        {"strategy": pipeline("rpc"), "workers": 2, "epochs": 1, "optimizer": {"momentum": 0.9}},
        0,
        25,
        20,
    ),
    # phase 1 on shards of 667, 667, 666 samples: 19, 19, 18 batches of 37, so the
    # checkpoint at the lead's step 18 finds member 2 at the end of its epoch
    "distill-members": (
        {
            "strategy": distill(member_epochs=2, member_data="shards"),
            "workers": 3,
            "batch_size": 37,
            "epochs": 1,
            "checkpoint": {"every": 9},
        },
        2,
        25,
        18,
    ),
    # phase 2 (63 member steps, then the target's), the target's logits sent back
    "distill-target": (
        {"strategy": distill(bidirectional=True), "workers": 2, "epochs": 1},
        0,
        85,
        80,
    ),
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """case -> the uninterrupted run's result, each run once for the tests that need it (a
    pipeline run spends most of its seconds starting up)."""
    done = {}

    def result_of(case: str):
        if case not in done:
            done[case] = run(config(tmp_path_factory.mktemp(case), "full", CASES[case][0]))
        return done[case]

    return result_of


@pytest.mark.parametrize("case", list(CASES))
def test_a_worker_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(
    tmp_path, uninterrupted, case
):
    fields, victim, step, resumed_at = CASES[case]
    full = uninterrupted(case)
    fault = {"rank": victim, "step": step, "kind": "exit"}
    with pytest.raises(RunFailed, match=f"rank {victim}"):
        run(config(tmp_path, "cut", fields, fault=fault))  # os._exit, as a killed process
    cut = tmp_path / "runs" / "cut"

    summary = run(config(tmp_path, "cut", fields), resume=cut).summary

    assert_same_run(full.run_dir, cut, "step")
    assert summary["resumed_at"] == [resumed_at]
    assert len(trajectory(cut, "step")) == len({s for s, _ in trajectory(cut, "step")})
    assert_same_traffic(full.summary, summary)


def assert_same_traffic(full: dict, resumed: dict) -> None:
    """Bytes and calls are counted before the checkpoint and after it, once: every rank's,
    the pipeline's cut bytes and the distillation's logits bytes."""
    for rank, counted in full["bytes_per_rank"].items():
        for key in ("bytes_sent", "bytes_recv", "calls"):
            assert resumed["bytes_per_rank"][rank][key] == counted[key], (rank, key)
    for key in ("bytes_per_step_measured", "logits_bytes_in_per_step_measured"):
        assert resumed.get(key) == full.get(key), key


def test_a_checkpoint_holds_each_stage_and_each_member(uninterrupted):
    pipe, members = uninterrupted("1f1b").run_dir, uninterrupted("distill-target").run_dir

    stage = torch.load(pipe / "checkpoints" / "step-00000060" / "rank-1.pt", weights_only=True)
    lead = torch.load(members / "checkpoints" / "step-00000120" / "rank-0.pt", weights_only=True)
    other = torch.load(members / "checkpoints" / "step-00000120" / "rank-1.pt", weights_only=True)

    assert set(stage["objects"]) == {"stage", "optimizer"}
    assert stage["objects"]["optimizer"]["state"]  # momentum buffers
    assert stage["position"] == {"done": 60, "epoch": 0, "batch": 60}
    assert set(lead["objects"]) == {"member", "member_opt", "target", "target_opt"}
    assert set(other["objects"]) == {"member", "member_opt"}
    assert lead["position"] == {"phase": "target", "epoch": 0, "batch": 57, "done": 120}
    assert other["position"] == lead["position"]
