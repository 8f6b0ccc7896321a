"""Runs across two simulated hosts (tests/hosts.py) that fail end on both hosts within the
collective timeout + 10 s, each host with one distlab line naming the cause and the fix, no
distlab traceback and no process left behind; the lead's summary.json says `failed` with the
cause where the run had started (a node that cannot join fails before any run directory).

torchrun prints its own report and traceback when a worker fails (from torch, not distlab):
tolerated, as in test_torchrun.py.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import time

import pytest
from tests.hosts import host_bed, missing, wait_all
from tests.integration.test_torchrun import distlab_lines

pytestmark = pytest.mark.slow

TIMEOUT = 12  # the collective timeout of every run here (--set timeout)
BOUND = TIMEOUT + 10
PORTS = itertools.count(29710)


def run_args(name: str, epochs: int = 1) -> list[str]:
    return [
        "--strategy", "allreduce", "--workers", "2", "--dataset", "synthetic", "--model", "mlp",
        "--epochs", str(epochs), "--quiet", "--out-dir", "/mnt/distlab-host/runs",
        "--name", name, "--set", f"timeout={TIMEOUT}",
    ]  # fmt: skip


@pytest.fixture
def bed(request):
    reason = missing()
    if reason:
        pytest.skip(reason)
    with host_bed(2, loopback_name=getattr(request, "param", False)) as hosts:
        yield hosts


def start_both(a, b, *args: str) -> list:
    port = next(PORTS)
    return [
        host.popen(host.torchrun(2, i, 1, a.addr, *args, port=port))
        for i, host in enumerate((a, b))
    ]


def one_line(stderr: str) -> str:
    """The host's one distlab line; no distlab frames."""
    ours = distlab_lines(stderr)
    assert len(ours) == 1 and ours[0].startswith("error: "), stderr[-3000:]
    return ours[0]


def ended(results, started: float, *hosts) -> list[str]:
    """Each host's line, once both ended within the bound and left no process."""
    wall = time.monotonic() - started
    assert all(rc not in (0, None) for rc, _, _ in results), [r[2][-2000:] for r in results]
    assert wall < BOUND, wall
    for host in hosts:
        assert host.pids() == []
    return [one_line(stderr) for _, _, stderr in results]


def summary_error(a, name: str) -> str:
    summary = json.loads((a.home / "runs" / name / "summary.json").read_text())
    assert summary["status"] == "failed"
    return summary["error"]


def wait_for_training(a, name: str, procs) -> float:
    """When the lead's first step event appears (training runs on both hosts)."""
    events = a.home / "runs" / name / "events" / "rank-0.jsonl"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        if events.exists() and '"kind": "step"' in events.read_text():
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"training did not start: {[p.poll() for p in procs]}")


@pytest.mark.parametrize("bed", [True], indirect=True)
def test_a_host_name_on_loopback_is_named_with_its_fixes(bed):
    a, b = bed
    started = time.monotonic()
    lines = ended(wait_all(start_both(a, b, *run_args("lo")), 3 * BOUND), started, a, b)
    for host, line in zip((a, b), lines, strict=True):
        assert (
            f"on {host.name} cannot join: host name '{host.name}' resolves to the loopback" in line
        )
        assert "gloo would bind 127.0.1.1" in line
        assert "GLOO_SOCKET_IFNAME=eth0 or --set network.interface=eth0" in line
        assert "/etc/hosts" in line
    # the fix it names works: the same run binds the link's interface and completes
    fixed = wait_all(start_both(a, b, *run_args("lo"), "--set", "network.interface=eth0"), 90)
    assert [rc for rc, _, _ in fixed] == [0, 0], fixed[0][2][-2000:] + fixed[1][2][-2000:]
    wrong = wait_all(start_both(a, b, *run_args("lo2"), "--set", "network.interface=eth9"), 90)
    for _, _, stderr in wrong:
        line = one_line(stderr)
        assert "network.interface 'eth9' is not an interface of host" in line
        assert "interfaces here: lo, eth0" in line


def test_a_node_that_never_joins_is_counted(bed):
    """Each node's processes started by the node's own launcher (as mpirun and Slurm do;
    torchrun's agents meet before any worker starts): only one node comes."""
    a, b = bed
    for rank, host in enumerate((a, b)):
        env = {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
               "MASTER_ADDR": a.addr, "MASTER_PORT": str(next(PORTS))}  # fmt: skip
        argv = [sys.executable, "-m", "distlab", "run", *run_args(f"alone{rank}"),
                "--set", "threads=1"]  # fmt: skip
        started = time.monotonic()
        [line] = ended(wait_all([host.popen(argv, env=env)], 3 * BOUND), started, a, b)
        if rank == 0:
            assert f"1 of 2 nodes joined within {TIMEOUT} s" in line
            assert f"start the run on every node with MASTER_ADDR={a.addr}" in line
        else:
            assert f"the node of rank 0 did not answer at {a.addr}:" in line
            assert "start the run there too" in line


def test_a_link_cut_mid_run_names_the_rank_and_its_host(bed):
    a, b = bed
    procs = start_both(a, b, *run_args("cut", epochs=40))
    wait_for_training(a, "cut", procs)
    b.link(False)
    cut = time.monotonic()
    lead, other = ended(wait_all(procs, 3 * BOUND), cut, a, b)
    assert "rank 1 on hostb unreachable: 10.77.0.2 does not answer from hosta" in lead
    assert "link between the hosts is down" in lead
    assert "rank 0 on hosta unreachable from hostb" in other
    assert summary_error(a, "cut") in lead


@pytest.mark.parametrize("group", [False, True], ids=["agent", "agent-group"])
def test_a_killed_agent_is_named_and_its_worker_ends(bed, group):
    a, b = bed
    name = f"kill{int(group)}"
    procs = start_both(a, b, *run_args(name, epochs=40))
    wait_for_training(a, name, procs)
    # the sh that starts a host's command execs torchrun: the Popen's pid is the agent's;
    # torchrun's workers run in sessions of their own, so neither kill reaches them
    if group:
        os.killpg(procs[1].pid, signal.SIGKILL)
    else:
        os.kill(procs[1].pid, signal.SIGKILL)
    killed = time.monotonic()
    results = wait_all(procs, 3 * BOUND)
    assert results[1][0] == -signal.SIGKILL
    assert time.monotonic() - killed < BOUND
    assert a.pids() == [] and b.pids() == []  # the worker it left on hostb ended too
    lead = one_line(results[0][2])
    assert "rank 1 on hostb failed: LauncherLost: the launcher of rank 1 on hostb" in lead
    assert "was killed" in lead
    assert one_line(results[1][2]).startswith("error: run failed: rank 1 failed: LauncherLost")
    assert summary_error(a, name) in lead
