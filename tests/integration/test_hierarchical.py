"""The hierarchical exchange across two simulated hosts (tests/hosts.py) of two ranks each,
under torchrun: shared memory on each host, gloo between the hosts' leaders. Each run is
set beside the flat gloo exchange (`--set intra_node=gloo`) on the same hosts: the same step
losses and final weights bitwise, on every rank the same bytes counted (the formula's),
and the start events say which exchange each rank used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.hosts import HOST_DIR, wait_all

from distlab.runs.events import read_events

pytestmark = pytest.mark.slow

DATA = ["--dataset", "synthetic", "--model", "mlp", "--epochs", "1", "--quiet"]


def run_on_hosts(hosts, name: str, strategy: str, exchange: str, port: int) -> Path:
    """One run of 2 hosts x 2 ranks, written where each host sees its own directory (no
    shared file system); the run directory on the lead's host."""
    a, b = hosts
    args = [*DATA, "--strategy", strategy, "--workers", "4", "--out-dir", f"{HOST_DIR}/runs"]
    args += ["--name", name, "--set", f"intra_node={exchange}", "--set", "timeout=30"]
    procs = [h.popen(h.torchrun(2, i, 2, a.addr, *args, port=port)) for i, h in enumerate(hosts)]
    for host, (rc, _, err) in zip(hosts, wait_all(procs, timeout=120), strict=True):
        assert rc == 0, f"{host.name}: {err[-3000:]}"
    assert not a.pids() and not b.pids()
    return a.home / "runs" / name


def per_rank(run_dir: Path) -> tuple[dict[int, str], dict[int, list[float]]]:
    """Each rank's exchange (from its start event) and the step losses the lead logs (the
    global mean of each step: every rank's calls agreeing bitwise is tested on one host in
    test_shm.py, with the same grouping code)."""
    events = read_events(run_dir / "events.jsonl")
    exchange = {e["rank"]: e["exchange"] for e in events if e.get("phase") == "start"}
    losses: dict[int, list[float]] = {}
    for e in events:
        if e["kind"] == "step":
            losses.setdefault(e["rank"], []).append(e["loss"])
    return exchange, losses


def counted(summary: dict) -> dict:
    return {
        rank: {k: v for k, v in stats.items() if k != "comm_seconds"}
        for rank, stats in summary["bytes_per_rank"].items()
    }


@pytest.mark.parametrize("strategy", ["allreduce", "ddp"])
def test_hierarchical_equals_flat_gloo_across_hosts(two_hosts, strategy):
    port = 29600 if strategy == "allreduce" else 29700
    runs = {
        exchange: run_on_hosts(two_hosts, f"{strategy}-{exchange}", strategy, exchange, port + i)
        for i, exchange in enumerate(("auto", "gloo"))
    }
    (hier, hier_losses), (flat, flat_losses) = (per_rank(runs[m]) for m in ("auto", "gloo"))
    assert hier == dict.fromkeys(range(4), "hierarchical")
    assert flat == dict.fromkeys(range(4), "gloo")
    assert hier_losses[0] and hier_losses == flat_losses
    models = [torch.load(runs[m] / "model.pt", weights_only=True) for m in ("auto", "gloo")]
    assert models[0].keys() == models[1].keys()
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    summaries = [json.loads((runs[m] / "summary.json").read_text()) for m in ("auto", "gloo")]
    assert counted(summaries[0]) == counted(summaries[1])
    # per step, each rank hands in and gets back its gradients (2 x P x 4 bytes) and the two
    # floats of the global loss (16 bytes)
    per_step = 2 * summaries[0]["params"] * 4 + 16
    assert summaries[0]["bytes_per_step_analytic"] == per_step - 16
    for rank, stats in counted(summaries[0]).items():
        assert stats["bytes_sent"] + stats["bytes_recv"] == len(hier_losses[0]) * per_step, rank
