"""Every multi-process strategy under torchrun across two simulated hosts (tests/hosts.py)
computes what the same run computes on one host: the same losses and the same final weights.

The hosts share no file system at /mnt/distlab-host, where the runs write: the lead writes
the run directory once, on its own host (hosta), rank 0 receiving the events (and a remote
lead's model.pt) of the ranks on hostb, whose directory stays empty.

The one-host run goes through distlab's own spawn launcher with the same config (threads=1
as on the hosts): its ranks exchange through shared memory, the hosts' through gloo. Both
sum in the same order (recursive doubling over a power-of-two world, or point-to-point
messages summed in rank order), so every comparison is exact (bit-identical) except where
a case names a tolerance and why.
"""

from __future__ import annotations

import itertools
import re
import time

import pytest
import torch
from tests.conftest import run_small
from tests.hosts import host_bed, missing, wait_all

from distlab.runs.directory import RunPaths, read_json
from distlab.runs.events import read_events

pytestmark = pytest.mark.slow

DATA = {"dataset": "synthetic", "model": "mlp", "epochs": 1, "batch_size": 64, "threads": 1}
PORTS = itertools.count(29610)
WALL_SECONDS = 90


@pytest.fixture(scope="module")
def hosts():
    reason = missing()
    if reason:
        pytest.skip(reason)
    with host_bed(2) as bed:
        yield bed


def cli_args(strategy: dict, workers: int, name: str) -> list[str]:
    """`distlab run` flags for the config `run_small` gets from the same fields."""
    args = ["--strategy", strategy["name"], "--workers", str(workers), "--name", name]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in DATA.items() if k != "threads"]
    args += [f"--set=strategy.{k}={v}" for k, v in strategy.items() if k != "name"]
    return [*args, "--out-dir", "/mnt/distlab-host/runs", "--quiet", "--set", "timeout=30"]


def on_hosts(hosts, argv: list[str], per_host: int = 1) -> list[tuple[int | None, str, str]]:
    """`distlab run ARGV` under torchrun, `per_host` ranks on each host, to its end: each
    host's (returncode, stdout, stderr); no process is left on either host."""
    a, b = hosts
    port = next(PORTS)
    procs = [
        host.popen(host.torchrun(2, node, per_host, a.addr, *argv, port=port))
        for node, host in enumerate(hosts)
    ]
    ended = wait_all(procs, WALL_SECONDS)
    assert a.pids() == [] and b.pids() == []
    return ended


def run_on_hosts(hosts, strategy: dict, workers: int, per_host: int, name: str) -> RunPaths:
    """The run across the hosts, which must complete; the lead's run directory."""
    ended = on_hosts(hosts, cli_args(strategy, workers, name), per_host)
    for (rc, _, err), host in zip(ended, hosts, strict=True):
        assert rc == 0, f"{host.name}: {err[-3000:]}"
    return RunPaths(hosts[0].home / "runs" / name)


def record(events: list[dict]) -> list[tuple]:
    """What the run computed, as its lead recorded it: every step, round and evaluation."""
    kinds = ("step", "round", "eval")
    return [
        (e["kind"], e.get("step"), e.get("round"), e["loss"], e.get("accuracy"))
        for e in events
        if e["kind"] in kinds
    ]


def assert_same(got: list[tuple], want: list[tuple], tolerance: float) -> None:
    assert [g[:3] for g in got] == [w[:3] for w in want]
    for g, w in zip(got, want, strict=True):
        assert abs(g[3] - w[3]) <= tolerance, (g, w)


def assert_same_weights(got: dict, want: dict, tolerance: float) -> None:
    assert got.keys() == want.keys()
    for key in want:
        if tolerance == 0:
            assert torch.equal(got[key], want[key]), key
        else:
            assert torch.allclose(got[key], want[key], rtol=0, atol=tolerance), key


CASES = {
    # name: (strategy, processes -> --workers)
    "allreduce": ({"name": "allreduce"}, lambda n: n),
    "ddp": ({"name": "ddp"}, lambda n: n),
    "param-server-sync": ({"name": "param-server", "mode": "sync"}, lambda n: n - 1),
    "param-server-async": ({"name": "param-server", "mode": "async"}, lambda n: n - 1),
    "local-sgd": ({"name": "local-sgd"}, lambda n: n),
    "gossip": ({"name": "gossip"}, lambda n: n),
    "fedavg": (
        {"name": "fedavg", "executor": "processes", "rounds": 3, "clients": 6},
        lambda n: n - 1,
    ),
    "pipeline": ({"name": "pipeline"}, lambda n: n),
}
# Where the two computations may differ in the last bits, and why (none so far).
TOLERANCE: dict[str, float] = {}
LAYOUTS = [(case, 1) for case in CASES] + [
    ("allreduce", 2),
    ("param-server-sync", 2),
    ("fedavg", 2),
]


@pytest.mark.parametrize(("case", "per_host"), LAYOUTS, ids=[f"{c}-2x{p}" for c, p in LAYOUTS])
def test_two_hosts_compute_what_one_host_computes(hosts, tmp_path, case, per_host):
    strategy, workers_of = CASES[case]
    workers = workers_of(2 * per_host)
    begin = time.monotonic()
    paths = run_on_hosts(hosts, strategy, workers, per_host, f"{case}-{per_host}")
    local = run_small(tmp_path, strategy=strategy, workers=workers, **DATA)
    tolerance = TOLERANCE.get(case, 0.0)

    summary = read_json(paths.summary)
    assert summary["status"] == "completed"
    events = read_events(paths.merged_events)
    assert {e["rank"] for e in events} == set(range(2 * per_host))  # every rank's events
    assert_same(record(events), record(local.events), tolerance)
    weights = torch.load(paths.model, weights_only=True)
    want = torch.load(local.run_dir / "model.pt", weights_only=True)
    assert_same_weights(weights, want, tolerance)
    assert paths.config.is_file()
    assert paths.partition_json.is_file() == (local.run_dir / "partition.json").is_file()
    assert list(hosts[1].home.iterdir()) == []  # hostb wrote no run file
    print(f"{case} 2x{per_host}: {time.monotonic() - begin:.1f} s")


def test_a_failure_on_the_other_host_is_recorded_once_on_the_lead(hosts):
    a, b = hosts
    fault = ["--set", "fault.rank=1", "--set", "fault.step=5"]
    ended = on_hosts(hosts, [*cli_args({"name": "allreduce"}, 2, "fails"), *fault])
    assert all(rc not in (0, None) for rc, _, _ in ended)
    paths = RunPaths(a.home / "runs" / "fails")
    summary = read_json(paths.summary)
    assert summary["status"] == "failed"
    # the cause came through the launcher's store: hostb wrote no error file of its own
    cause = r"rank 1 (on hostb )?failed: RuntimeError: injected fault at step 5"
    assert re.fullmatch(cause, summary["error"]), summary["error"]
    assert {e["rank"] for e in read_events(paths.merged_events)} == {0}
    assert list(b.home.iterdir()) == []


def test_checkpoints_without_a_shared_directory_are_refused_in_one_line(hosts):
    a, b = hosts
    every = ["--set", "checkpoint.every=5"]
    ended = on_hosts(hosts, [*cli_args({"name": "allreduce"}, 2, "ckpt"), *every])
    expected = (
        "error: checkpoint.every=5 needs a run directory every rank sees, but rank(s) 1 do "
        "not see '/mnt/distlab-host/runs/ckpt' (no shared file system); use "
        "checkpoint.every=0 or an --out-dir on a shared file system"
    )
    for rc, out, err in ended:
        assert rc not in (0, None) and out == ""
        assert [line for line in err.splitlines() if line.startswith("error: ")] == [expected]
    assert not (a.home / "runs" / "ckpt").exists()
    assert list(b.home.iterdir()) == []
