"""The Communicator over real gloo groups: results and byte counts."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distlab.runtime.comm import TorchCommunicator


def _worker(rank: int, world: int, store_path: str, out: str) -> None:
    store = dist.FileStore(store_path, world)
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=30)
    )
    comm = TorchCommunicator()
    values = torch.arange(5, dtype=torch.float32) * (rank + 1) + 0.1 * rank
    comm.all_reduce(values)
    gathered = comm.gather(torch.tensor([float(rank)]), dst=0)
    token = torch.tensor([7.0]) if rank == 0 else torch.zeros(1)
    comm.broadcast(token, src=0)
    result = {
        "sum": values.tolist(),
        "token": token.item(),
        "stats": comm.stats(),
        "gathered": [t.item() for t in gathered] if gathered else None,
    }
    Path(out, f"{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def run_group(tmp_path: Path, world: int) -> list[dict]:
    mp.start_processes(
        _worker,
        args=(world, str(tmp_path / "store"), str(tmp_path)),
        nprocs=world,
        start_method="spawn",
    )
    return [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(world)]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_all_reduce_sums_and_every_rank_agrees_bitwise(tmp_path, world):
    results = run_group(tmp_path, world)
    expected = sum(torch.arange(5.0) * (r + 1) + 0.1 * r for r in range(world))
    for res in results:
        assert res["sum"] == results[0]["sum"]  # bitwise equal on every rank
        assert torch.allclose(torch.tensor(res["sum"]), expected)
        assert res["token"] == 7.0
    assert results[0]["gathered"] == [float(r) for r in range(world)]


def test_payload_is_counted_per_the_rule(tmp_path):
    results = run_group(tmp_path, 2)
    # all_reduce of 5 floats: 20 in + 20 out. gather of 1 float: root gets 2 back.
    # broadcast of 1 float: root hands 4 in, the other gets 4 back.
    root, other = results[0]["stats"], results[1]["stats"]
    assert (root["bytes_sent"], root["bytes_recv"]) == (20 + 4 + 4, 20 + 8)
    assert (other["bytes_sent"], other["bytes_recv"]) == (20 + 4, 20 + 4)
    assert root["calls"] == other["calls"] == 3
