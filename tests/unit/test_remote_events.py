"""Ranks that do not see the run directory (runtime/remote_events.py), with two real gloo
processes on this machine: rank 1 is handed another directory of the run's name, as a
machine without the shared file system sees it."""

from __future__ import annotations

import json
import multiprocessing
import socket
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist

from distlab.config import validate_config
from distlab.runs.directory import RunPaths
from distlab.runtime.remote_events import agree_view

CONFIG = {"dataset": "synthetic", "model": "mlp", "strategy": "allreduce", "workers": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank: int, port: int, tmp: str) -> None:
    """One rank: each scenario in turn, its outcome written to result-RANK.json."""
    store = dist.TCPStore("127.0.0.1", port, 2, rank == 0, timeout=timedelta(seconds=30))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    outcome = {}
    try:
        for scenario in (unshared, stale_directory, shared, checkpoints_refused):
            outcome[scenario.__name__] = scenario(rank, Path(tmp) / scenario.__name__)
    except Exception:  # noqa: BLE001 - the parent shows it
        outcome["error"] = traceback.format_exc()
    finally:
        dist.destroy_process_group()
    (Path(tmp) / f"result-{rank}.json").write_text(json.dumps(outcome))


def own_dir(rank: int, base: Path, make: bool = True) -> RunPaths:
    """Rank 0's run directory, or rank 1's view of a machine of its own."""
    paths = RunPaths(base / ("lead" if rank == 0 else "other") / "run")
    if make and rank == 0:
        paths.events_dir.mkdir(parents=True)
    return paths


def unshared(rank: int, base: Path) -> dict:
    cfg = validate_config(CONFIG)
    view = agree_view(cfg, own_dir(rank, base), rank, 2, 1, torch_cpu())
    out = {"remote": view.remote, "root": str(view.paths.root)}
    if rank == 1:  # the lead, on the other machine: its events and model.pt go to rank 0
        view.paths.rank_events(1).write_text('{"kind": "phase", "rank": 1}\n')
        view.paths.model.write_bytes(b"weights")
    view.deliver()
    view.close()
    out["scratch_left"] = view.scratch is not None and view.scratch.exists()
    return out


def stale_directory(rank: int, base: Path) -> dict:
    """Rank 1's machine holds a directory of that name with an earlier run's marker."""
    paths = own_dir(rank, base)
    if rank == 1:
        paths.root.mkdir(parents=True)
        paths.marker.write_bytes(b"an earlier nonce")
    view = agree_view(validate_config(CONFIG), paths, rank, 2, 0, torch_cpu())
    view.close()
    return {"remote": view.remote}


def shared(rank: int, base: Path) -> dict:
    paths = RunPaths(base / "run")
    if rank == 0:
        paths.events_dir.mkdir(parents=True)
    dist.barrier()
    view = agree_view(validate_config(CONFIG), paths, rank, 2, 0, torch_cpu())
    return {"remote": view.remote, "root": str(view.paths.root)}


def checkpoints_refused(rank: int, base: Path) -> dict:
    cfg = validate_config({**CONFIG, "checkpoint": {"every": 2}})
    try:
        agree_view(cfg, own_dir(rank, base), rank, 2, 0, torch_cpu())
    except ValueError as exc:
        return {"error": str(exc)}
    return {"error": None}


def torch_cpu():
    import torch

    return torch.device("cpu")


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("remote")
    ctx, port = multiprocessing.get_context("spawn"), free_port()
    procs = [ctx.Process(target=rank_main, args=(r, port, str(tmp))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    results = [json.loads((tmp / f"result-{r}.json").read_text()) for r in range(2)]
    for result in results:
        assert "error" not in result, result["error"]
    return tmp, results


def test_a_rank_without_the_directory_writes_in_scratch_and_sends_rank_0_its_files(outcome):
    tmp, (zero, one) = outcome
    lead = RunPaths(tmp / "unshared" / "lead" / "run")
    assert zero["unshared"]["remote"] == one["unshared"]["remote"] == [1]
    assert zero["unshared"]["root"] == str(lead.root)
    assert Path(one["unshared"]["root"]).name == "run"  # the run's name: its events say so
    assert not (tmp / "unshared" / "other").exists()  # never created on its machine
    assert lead.rank_events(1).read_text() == '{"kind": "phase", "rank": 1}\n'
    assert lead.model.read_bytes() == b"weights"
    assert not lead.marker.exists()
    assert not one["unshared"]["scratch_left"]


def test_a_directory_of_the_same_name_from_an_earlier_run_is_not_the_run(outcome):
    _, (zero, one) = outcome
    assert zero["stale_directory"]["remote"] == one["stale_directory"]["remote"] == [1]


def test_ranks_sharing_the_directory_write_there(outcome):
    tmp, (zero, one) = outcome
    assert zero["shared"] == one["shared"] == {"remote": [], "root": str(tmp / "shared" / "run")}


def test_checkpoints_without_a_shared_directory_are_refused_on_every_rank(outcome):
    tmp, (zero, one) = outcome
    lead = tmp / "checkpoints_refused" / "lead" / "run"
    # the same line on both ranks, but for the path: here each rank was given its own
    errors = [r["checkpoints_refused"]["error"].replace("other", "lead") for r in (zero, one)]
    assert (
        errors[0]
        == errors[1]
        == (
            f"checkpoint.every=2 needs a run directory every rank sees, but rank(s) 1 do not see "
            f"'{lead}' (no shared file system); use checkpoint.every=0 or an --out-dir on a "
            "shared file system"
        )
    )
    assert not lead.exists()  # the directory made for the refused run is removed
