"""The shared-memory exchange between the CPU ranks of one host: every call against gloo in
the same process group, bitwise; whole runs with intra_node=auto against gloo; a dead or
stuck peer named; nothing left in /dev/shm."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tests.conftest import assert_no_orphans, final_state, make_config, run_small

from distlab.runtime.comm import TorchCommunicator
from distlab.runtime.shm import ShmCommunicator, attach_host, hierarchical, make_communicator

# --- calls, against gloo in the same group ---------------------------------------------------


def _join(rank: int, world: int, store_path: str) -> None:
    store = dist.FileStore(store_path, world)
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=30)
    )


def _both(comms, call):
    """The same call through shared memory and gloo: both results."""
    return [call(c) for c in comms]


def _calls(rank: int, world: int, store_path: str, out: str, keys=None) -> None:
    """Every call through the chosen exchange and through gloo. `keys`: each rank's host key
    for the hierarchical exchange (the real grouping, with hosts told apart by these keys
    instead of host_key()), or None for make_communicator's choice."""
    _join(rank, world, store_path)
    cfg = make_config(Path(out))
    shm = (
        make_communicator(cfg, torch.device("cpu"))
        if keys is None
        else hierarchical(keys, cfg.timeout)
    )
    comms = (shm, TorchCommunicator())
    gen = torch.Generator().manual_seed(rank)
    grad = torch.randn(1000, generator=gen, dtype=torch.float32)
    res: dict = {"kind": type(shm).__name__}

    def reduce(c, dtype=torch.float32, op=dist.ReduceOp.SUM):
        t = grad.to(dtype).clone()
        c.all_reduce(t, op)
        return t

    res["sum"] = _both(comms, reduce)
    res["sum64"] = _both(comms, lambda c: reduce(c, torch.float64))
    res["int"] = _both(comms, lambda c: reduce(c, torch.int64))
    res["max"] = _both(comms, lambda c: reduce(c, op=dist.ReduceOp.MAX))

    def broadcast(c):
        t = grad.clone() if rank == 1 else torch.zeros(1000)
        c.broadcast(t, src=1)
        return t

    res["broadcast"] = _both(comms, broadcast)
    res["gather"] = _both(comms, lambda c: c.gather(grad.view(10, 100), dst=world - 1))
    ring = [(rank - 1) % world, (rank + 1) % world] if world > 2 else [1 - rank]
    res["exchange"] = _both(comms, lambda c: c.exchange(grad * (rank + 1), ring))
    res["p2p"] = _both(comms, lambda c: _send_in_a_ring(c, rank, world))
    res["any"] = _both(comms, lambda c: _any_source(c, rank, world))
    _both(comms, lambda c: c.barrier())
    res["stats"] = [c.stats() for c in comms]
    torch.save(res, Path(out, f"{rank}.pt"))
    dist.barrier()
    os._exit(0)  # the records are written; gloo's teardown is not what is tested


def _send_in_a_ring(c, rank: int, world: int) -> list[torch.Tensor]:
    """Three messages of different sizes and dtypes in a row around the ring: rank 0 sends
    first, every other rank passes them on once it has them (gloo's send waits for the
    recv)."""
    dst, src = (rank + 1) % world, (rank - 1) % world
    sent = [torch.tensor([rank, 3]), torch.arange(rank + 5.0), torch.full((7, 3), rank * 1.5)]
    got = [torch.empty(2, dtype=torch.int64), torch.empty(src + 5), torch.empty(7, 3)]

    def send_all():
        for t in sent:
            c.send(t, dst)

    def recv_all():
        for t in got:
            c.recv(t, src)

    for step in (send_all, recv_all) if rank == 0 else (recv_all, send_all):
        step()
    return got


def _any_source(c, rank: int, world: int) -> list[tuple[int, float]]:
    """Rank 0 takes one message from every other rank in whatever order they come."""
    if rank != 0:
        c.send(torch.full((300,), float(rank)), 0)
        return []
    pairs = []
    for _ in range(world - 1):
        buf = torch.empty(300)
        pairs.append((c.recv(buf), float(buf[0])))
    return sorted(pairs)


def run_calls(tmp_path: Path, world: int, keys=None) -> list[dict]:
    mp.start_processes(
        _calls,
        args=(world, str(tmp_path / "store"), str(tmp_path), keys),
        nprocs=world,
        start_method="spawn",
    )
    return [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(world)]


def bitwise(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(bitwise(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("world", [2, 4])
def test_every_call_equals_gloo_bitwise(tmp_path, world):
    results = run_calls(tmp_path, world)
    for rank, res in enumerate(results):
        assert res["kind"] == "ShmCommunicator"
        for name in ("sum", "sum64", "int", "max", "broadcast", "gather", "exchange", "p2p"):
            shm, gloo = res[name]
            assert bitwise(shm, gloo), f"{name} differs on rank {rank}"
        assert bitwise(res["sum"][0], results[0]["sum"][0])  # the same on every rank
        assert res["stats"][0] == {**res["stats"][1], "comm_seconds": res["stats"][0][
            "comm_seconds"
        ]}  # fmt: skip
    assert results[0]["any"][0] == [(r, float(r)) for r in range(1, world)]
    assert results[0]["any"][0] == results[0]["any"][1]
    assert len(results[world - 1]["gather"][0]) == world


def test_two_hosts_of_two_ranks_equal_gloo_bitwise(tmp_path):
    """Ranks 0, 1 and 2, 3 as two hosts: shared memory on each, gloo between the leaders;
    contiguous powers of two, so every call equals flat gloo bitwise, counted alike."""
    results = run_calls(tmp_path, 4, keys=[11, 11, 22, 22])
    for rank, res in enumerate(results):
        assert res["kind"] == "HierarchicalCommunicator"
        for name in ("sum", "sum64", "int", "max", "broadcast", "gather", "exchange", "p2p"):
            hier, gloo = res[name]
            assert bitwise(hier, gloo), f"{name} differs on rank {rank}"
        assert bitwise(res["sum"][0], results[0]["sum"][0])
        assert res["stats"][0] == {**res["stats"][1], "comm_seconds": res["stats"][0][
            "comm_seconds"
        ]}  # fmt: skip
    assert results[0]["any"][0] == [(r, float(r)) for r in range(1, 4)]


def test_a_host_of_three_and_a_rank_alone_agree_bitwise(tmp_path):
    """Three ranks on one host and one on another (or one that cannot map the segments,
    key 0): not the flat summation order, but every rank agrees and the rest is exact."""
    results = run_calls(tmp_path, 4, keys=[5, 5, 5, 0])
    for res in results:
        assert res["kind"] == "HierarchicalCommunicator"
        assert bitwise(res["sum"][0], results[0]["sum"][0])
        assert torch.allclose(res["sum"][0], res["sum"][1], atol=1e-5)
        for name in ("int", "max", "broadcast", "gather", "exchange", "p2p"):
            assert bitwise(*res[name]), name
    assert results[0]["any"][0] == [(r, float(r)) for r in range(1, 4)]


def test_three_ranks_agree_bitwise(tmp_path):
    """Not a power of two: gloo's ring sums in another order, but every rank agrees."""
    results = run_calls(tmp_path, 3)
    for res in results:
        assert bitwise(res["sum"][0], results[0]["sum"][0])
        assert torch.allclose(res["sum"][0], res["sum"][1], atol=1e-5)
        assert bitwise(res["p2p"][0], res["p2p"][1])


# --- a peer that never comes, or dies --------------------------------------------------------


def _lost_peer(rank: int, world: int, store_path: str, out: str) -> None:
    _join(rank, world, store_path)
    host = attach_host()
    comm = ShmCommunicator(host, timeout=1.0)
    if rank == 1:
        time.sleep(2.5)
        os._exit(0)  # without a word: the other rank must notice the process is gone
    errors = {}
    for name, call in (("timeout", comm.all_reduce), ("died", lambda t: comm.recv(t, 1))):
        start = time.monotonic()
        try:
            comm.timeout = 1.0 if name == "timeout" else 30.0
            call(torch.ones(4))
        except RuntimeError as exc:
            errors[name] = (type(exc).__name__, str(exc), time.monotonic() - start)
    Path(out, "errors.json").write_text(json.dumps(errors))
    os._exit(0)


def test_a_late_peer_times_out_and_a_dead_one_is_named(tmp_path):
    mp.start_processes(
        _lost_peer, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    errors = json.loads((tmp_path / "errors.json").read_text())
    kind, message, seconds = errors["timeout"]
    assert kind == "PeerTimeout"
    assert message == "timed out: rank 1 did not reach all_reduce within 1 s"
    assert 1.0 <= seconds < 2.0
    kind, message, seconds = errors["died"]
    assert kind == "PeerDied"
    assert message == "peer rank 1 died before it reached its send to rank 0"
    assert seconds < 5


# --- whole runs --------------------------------------------------------------------------------


def shm_files() -> set[str]:
    return (
        {p.name for p in Path("/dev/shm").glob("distlab*")} if Path("/dev/shm").is_dir() else set()
    )


STRATEGIES = {
    "allreduce": ("allreduce", 2),
    "local-sgd": ({"name": "local-sgd", "period": 2}, 2),
    "gossip": ({"name": "gossip", "topology": "ring"}, 4),
    "param-server": ("param-server", 2),
}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_a_run_through_shared_memory_equals_gloo_bitwise(tmp_path, name):
    strategy, workers = STRATEGIES[name]
    before = shm_files()
    runs = {
        mode: run_small(tmp_path / mode, strategy=strategy, workers=workers, intra_node=mode)
        for mode in ("auto", "gloo")
    }
    auto, gloo = (final_state(runs[m]) for m in ("auto", "gloo"))
    assert auto.keys() == gloo.keys()
    for key in auto:
        assert torch.equal(auto[key], gloo[key]), key
    assert counted(runs["auto"].summary) == counted(runs["gloo"].summary)
    assert shm_files() <= before


def counted(summary: dict) -> dict:
    """Each rank's bytes and calls, without the seconds."""
    return {
        rank: {k: v for k, v in stats.items() if k != "comm_seconds"}
        for rank, stats in summary["bytes_per_rank"].items()
    }


def test_a_killed_worker_is_named_while_the_server_waits(tmp_path):
    args = ["run", "--dataset", "synthetic", "--model", "mlp", "--strategy", "param-server"]
    args += ["--workers", "2", "--epochs", "500", "--quiet", "--out-dir", str(tmp_path)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "distlab", *args, "--name", "r"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    pids = [_rank_pid(tmp_path / "r", rank) for rank in range(3)]
    os.kill(pids[2], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "rank 2 died (killed by SIGKILL)" in err
    assert_no_orphans(pids)
    assert not shm_files()


def _rank_pid(run_dir: Path, rank: int) -> int:
    """The rank's pid once it has started (rank 0, the server: once it has stepped)."""
    path = run_dir / "events" / f"rank-{rank}.jsonl"
    end = time.monotonic() + 60
    while time.monotonic() < end:
        lines = path.read_text().splitlines() if path.exists() else []
        events = [json.loads(x) for x in lines if x.endswith("}")]
        starts = [e["pid"] for e in events if e.get("phase") == "start"]
        if starts and (rank != 0 or any(e["kind"] == "step" for e in events)):
            return starts[0]
        time.sleep(0.1)
    raise AssertionError(f"rank {rank} never stepped")
