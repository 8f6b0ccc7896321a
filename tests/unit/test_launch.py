"""Launcher pieces that need no processes: joining launchers, thread counts, messages."""

from __future__ import annotations

import pytest
from tests.conftest import make_config

from distlab.runtime.failures import is_peer_error
from distlab.runtime.launchers.external import (
    _describe_reports,
    _rendezvous_failure,
    external_env,
    local_world_size,
)
from distlab.runtime.worker import thread_count


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, (1, 4, 1)),
        (
            {
                "OMPI_COMM_WORLD_RANK": "3",
                "OMPI_COMM_WORLD_SIZE": "4",
                "OMPI_COMM_WORLD_LOCAL_RANK": "0",
            },
            (3, 4, 0),
        ),
        ({"PMI_RANK": "2", "PMI_SIZE": "3"}, (2, 3, 0)),
        ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}, (5, 8, 1)),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, None),  # one task: run locally
        ({}, None),
    ],
)
def test_external_env_reads_each_launcher(env, expected):
    assert external_env(env) == expected


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"LOCAL_WORLD_SIZE": "2"}, 2),  # torchrun
        ({"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, 4),
        ({"SLURM_NTASKS_PER_NODE": "2(x3)"}, 2),  # Slurm's "2 tasks on each of 3 nodes"
        ({}, 8),  # unknown: every process on this machine
    ],
)
def test_local_world_size_reads_each_launcher(env, expected):
    assert local_world_size(8, env) == expected


def test_thread_count_divides_the_cores(tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert thread_count(make_config(tmp_path), 4) == 2
    assert thread_count(make_config(tmp_path), 16) == 1
    assert thread_count(make_config(tmp_path, threads=3), 4) == 3


def test_peer_errors_are_told_from_a_rank_own_error():
    assert is_peer_error("Connection closed by peer [127.0.0.1]:1234")
    assert is_peer_error("Timed out waiting 5000ms for recv operation")
    assert not is_peer_error("RuntimeError: injected fault at step 5")


def test_partition_schemes_other_than_iid_are_for_federated_strategies(tmp_path):
    with pytest.raises(ValueError, match="applies to federated strategies"):
        make_config(
            tmp_path,
            strategy="allreduce",
            workers=2,
            partition={"scheme": "dirichlet", "alpha": 0.1},
        )


def test_a_context_without_a_process_group_trains_a_strategy():
    import torch.distributed as dist

    from distlab.config import validate_config
    from distlab.data.datasets import load_dataset
    from distlab.metrics import Recorder
    from distlab.runtime.comm import SoloCommunicator
    from distlab.runtime.context import WorkerContext
    from distlab.strategies import get_spec

    cfg = validate_config({"dataset": "synthetic", "model": "logreg", "epochs": 1})
    events = []
    ctx = WorkerContext.solo(cfg, load_dataset("synthetic"))
    ctx.recorder = Recorder(None, "solo", 0, "worker", comm=ctx.comm, on_event=events.append)

    get_spec("allreduce").run(ctx, get_spec("allreduce").params())

    assert not dist.is_initialized()
    assert isinstance(ctx.comm, SoloCommunicator) and ctx.comm.stats()["bytes_sent"] == 0
    assert sum(e["kind"] == "step" for e in events) == 63  # ceil(2000 / 32)
    assert [e for e in events if e["kind"] == "eval"][-1]["accuracy"] > 0.5


PEER = "RuntimeError: Connection closed by peer [127.0.0.1]:1234"
TIMEOUT = "RuntimeError: Timed out waiting 5000ms for send operation to complete"


@pytest.mark.parametrize(
    "reports, expected",
    [
        (  # a rank's own error wins over its peers' connection errors
            {0: (False, PEER), 1: (False, "RuntimeError: injected fault at step 20")},
            "rank 1 failed: RuntimeError: injected fault at step 20",
        ),
        (  # the others timed out waiting and one rank never answered
            {0: (False, TIMEOUT), 2: (False, TIMEOUT)},
            f"rank 1 is stuck: no response within the 30 s collective timeout (rank 0 "
            f"reported: {TIMEOUT})",
        ),
        (  # the connection dropped and one rank never answered
            {0: (False, PEER), 2: (True, "")},
            f"rank 1 died without a report (rank 0 reported: {PEER})",
        ),
        (  # rank 0 was stopped by the launcher after rank 1 died
            {0: (True, "")},
            "rank 1 died without a report (others stopped)",
        ),
    ],
)
def test_reports_of_an_external_run_name_the_rank_that_caused_it(reports, expected):
    world = 3 if 2 in reports else 2
    assert _describe_reports(reports, world, 30.0) == expected


def test_rendezvous_timeout_says_how_many_joined(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "node1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    store = "Timed out after 31 seconds waiting for clients. 1/4 clients joined."
    client = "The client socket has timed out after 30000ms while trying to connect to (node1)."

    assert _rendezvous_failure(store, 4, 30.0) == (
        "rendezvous timed out: 1 of 4 processes joined within 30 s"
    )
    assert _rendezvous_failure(client, 4, 30.0) == (
        "rendezvous failed: rank 0 did not answer at node1:29500 within 30 s"
    )
