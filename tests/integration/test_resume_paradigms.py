"""Checkpoint and resume for local SGD, gossip, the parameter server and Hogwild!: a run
stopped after a checkpoint (a worker killed, or the whole command killed with SIGKILL) and
resumed ends with the same per-step or per-round losses, evaluations and final weights as an
uninterrupted run with the same seed, bit for bit, where the strategy is deterministic. Where
it is not (asynchronous parameter server with several workers, Hogwild! with several
processes), the resumed run goes on from the checkpoint and completes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.integration.test_resume import assert_same_run, config, kill_then_resume, trajectory

from distlab.api import run
from distlab.runtime.launch import RunFailed

# case -> (config fields, the rank that dies, the unit the run counts in, where it resumes)
# 3 epochs of 32 batches per worker (of 2; 21 batches per worker of 3); the victim dies
# after its step 25 and the checkpoints come every 10 steps or rounds.
CASES = {
    "local-sgd": (
        {
            "strategy": {"name": "local-sgd", "period": 4, "warmup_steps": 6},
            "workers": 2,
            "optimizer": {"momentum": 0.9},
            "eval_every": 7,
        },
        1,
        "step",
        20,
    ),
    "local-sgd-momentum-averaged": (
        {
            "strategy": {"name": "local-sgd", "period": 3, "average_momentum": True},
            "workers": 2,
            "optimizer": {"momentum": 0.9},
        },
        0,
        "step",
        20,
    ),
    # a round every 2 steps: round 10 ends at step 20
    "gossip-ring": (
        {"strategy": {"name": "gossip", "period": 2}, "workers": 3},
        2,
        "round",
        10,
    ),
    # the curvature directions of round 19 are still in use at round 21
    "gossip-curvature": (
        {
            "strategy": {
                "name": "gossip",
                "mixing": "curvature",
                "k": 1,
                "curvature_every": 3,
                "curvature_iterations": 4,
                "curvature_batches": 2,
            },
            "workers": 3,
        },
        1,
        "round",
        20,
    ),
    "gossip-ditto-random-graph": (
        {
            "strategy": {
                "name": "gossip",
                "topology": "random-k",
                "degree": 1,
                "mixing": "metropolis",
                "period": 2,
                "personalized": True,
                "personal": "ditto",
                "finetune": 2,
            },
            "workers": 3,
            "sampler": "split-batch",
            "optimizer": {"momentum": 0.5},
        },
        1,
        "round",
        10,
    ),
    "param-server-sync": (
        {"strategy": {"name": "param-server"}, "workers": 2, "optimizer": {"momentum": 0.9}},
        1,
        "step",
        20,
    ),
    # one worker: the asynchronous server applies its gradients in the one order there is
    "param-server-async-one-worker": (
        {"strategy": {"name": "param-server", "mode": "async"}, "workers": 1},
        1,
        "step",
        20,
    ),
    "hogwild-one-worker": (
        {"strategy": "hogwild", "workers": 1, "optimizer": {"momentum": 0.9}},
        0,
        "step",
        20,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_worker_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tmp_path, case):
    fields, victim, unit, at = CASES[case]
    full = run(config(tmp_path, "full", fields)).run_dir
    with pytest.raises(RunFailed, match=f"rank {victim}"):
        run(config(tmp_path, "cut", fields, fault={"rank": victim, "step": 25, "kind": "exit"}))
    cut = tmp_path / "runs" / "cut"

    run(config(tmp_path, "cut", fields), resume=cut)

    assert_same_run(full, cut, unit)
    assert trajectory(cut, "step") == trajectory(full, "step")
    assert json.loads((cut / "summary.json").read_text())["resumed_at"] == [at]


def test_a_gossip_checkpoint_is_taken_at_rounds(tmp_path):
    # 42 steps, a round every 3 steps, a checkpoint every 4 rounds: at steps 12, 24 and 36
    fields = {"strategy": {"name": "gossip", "period": 3}, "workers": 3, "epochs": 2}
    result = run(config(tmp_path, "rounds", fields | {"checkpoint": {"every": 4}}))

    folders = sorted(p.name for p in (result.run_dir / "checkpoints").iterdir())
    assert folders == ["round-00000008", "round-00000012"]  # the two newest are kept
    state = torch.load(result.run_dir / "checkpoints" / folders[-1] / "rank-2.pt")
    assert state["at"] == 12 and state["position"]["done"] == 36
    assert state["objects"]["worker"]["counts"] == [36, 12, 36]


def server_steps(run_dir: Path) -> list[dict]:
    events = map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
    return [e for e in events if e["kind"] == "step" and e["rank"] == 0]


def test_an_async_server_resumes_from_its_checkpoints_version(tmp_path):
    # Two workers' gradients arrive in an order that differs from run to run: the run is
    # not repeatable, so the resumed run is checked against itself. The checkpoint is taken
    # where both workers have done 5, 10, 15... steps, at server steps 10, 20, 30...; worker
    # 2 dies after its step 13, so the checkpoint at 20 is the newest complete one.
    fields = {"strategy": {"name": "param-server", "mode": "async"}, "workers": 2}
    with pytest.raises(RunFailed, match="rank 2"):
        run(config(tmp_path, "cut", fields, fault={"rank": 2, "step": 13, "kind": "exit"}))
    cut = tmp_path / "runs" / "cut"
    server = torch.load(cut / "checkpoints" / "step-00000020" / "rank-0.pt")
    workers = [torch.load(cut / "checkpoints" / "step-00000020" / f"rank-{r}.pt") for r in (1, 2)]

    run(config(tmp_path, "cut", fields), resume=cut)

    total = 2 * 3 * 32
    steps = server_steps(cut)
    assert [e["step"] for e in steps] == list(range(1, total + 1))  # each once
    assert server["extra"]["version"] == 20  # every gradient applied (no staleness bound)
    assert [w["objects"]["copy"]["steps"] for w in workers] == [10, 10]
    assert all(w["objects"]["copy"]["version"] <= 20 for w in workers)
    # a server that started over at version 0 would see negative staleness after the resume
    assert all(e["staleness"] >= 0 for e in steps)
    assert [e["worker"] for e in steps].count(1) == [e["worker"] for e in steps].count(2)
    end = [e for e in server_events(cut) if e.get("phase") == "train_end"]
    assert end[-1]["version"] == total
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_at"] == [20]
    assert summary["steps"] == total and summary["final_accuracy"] > 0.5


def server_events(run_dir: Path) -> list[dict]:
    events = map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
    return [e for e in events if e["rank"] == 0]


def test_a_hogwild_run_of_two_workers_resumes_from_the_shared_checkpoint(tmp_path):
    # Two workers' updates to the shared model interleave differently from run to run;
    # both stop at each checkpoint, and the resumed run goes on from it.
    fields = {"strategy": "hogwild", "workers": 2}
    with pytest.raises(RunFailed, match="rank 1"):
        run(config(tmp_path, "cut", fields, fault={"rank": 1, "step": 25, "kind": "exit"}))
    cut = tmp_path / "runs" / "cut"
    saved = torch.load(cut / "checkpoints" / "step-00000020" / "rank-0.pt")

    run(config(tmp_path, "cut", fields), resume=cut)

    events = [json.loads(line) for line in (cut / "events.jsonl").read_text().splitlines()]
    total = 3 * 32
    for rank in (0, 1):
        steps = [e["step"] for e in events if e["kind"] == "step" and e["rank"] == rank]
        assert steps == list(range(1, total + 1))  # each once, on every rank
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_at"] == [20]
    assert summary["updates_per_rank"] == [total, total]
    assert summary["samples"] == 2 * 3 * 1000
    # the lead's checkpoint holds the shared model; the first loss after the resume is
    # that of a trained model, not of the initial weights
    assert saved["objects"]["model"].keys() == torch.load(cut / "model.pt").keys()
    losses = {e["step"]: e["loss"] for e in events if e["kind"] == "step" and e["rank"] == 0}
    assert losses[21] < 0.5 * losses[1]
    assert summary["final_accuracy"] > 0.5


# --- the whole command killed -------------------------------------------------------------

ARGS = ["--dataset", "synthetic", "--model", "mlp", "--sampler", "random", "--quiet"]
# A SIGKILLed command under the spawn launcher is tested in test_resume.py (allreduce); here
# the shared-memory launcher's (Hogwild's) own way of starting ranks.
KILLED = {
    "hogwild-one-worker": (["--strategy", "hogwild", "--workers", "1"], 1),
}


@pytest.mark.parametrize("case", list(KILLED))
def test_a_command_killed_with_sigkill_resumes_from_its_checkpoint(tmp_path, case):
    strategy, processes = KILLED[case]
    args = [*ARGS, "--epochs", "12", "--set", "checkpoint.every=10", *strategy]

    done, full = kill_then_resume(tmp_path, args, processes)

    assert full.returncode == 0, full.stderr
    assert done.returncode == 0 and done.stderr == full.stderr, done.stderr  # no more said
    unit = "round" if case == "gossip" else "step"
    assert_same_run(tmp_path / "full", tmp_path / "cut", unit)
