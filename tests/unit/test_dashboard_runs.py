"""The dashboard's reading of run directories: real short runs, a run still running (no
summary), a last line cut in half, and a deployed federation's client events written by hand
into a real FedAvg run's rank file (in-process executors emit none)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from tests.conftest import make_config

from distlab.api import run
from distlab.dashboard.runs import RunsReader, list_runs, run_detail
from distlab.runtime.launch import RunFailed

NODE = 12107536797416033456  # Flower node ids exceed 2**53
FED = {"name": "fedavg", "clients": 3, "rounds": 2}


def node_of(client: int) -> int:
    return NODE + client


def append_events(path: Path, events: list[dict]) -> None:
    with open(path, "a") as fh:
        for event in events:
            fh.write(json.dumps({"run": "live", "rank": 0, "role": "server", **event}) + "\n")


def client_reports(rounds: list[dict]) -> list[dict]:
    """What a deployed server writes around these round events: each client connects, then
    reports its training each round (client 2 without a validation accuracy)."""
    events = [
        {"kind": "client", "seconds": 0.5, "client": c, "node": node_of(c), "status": "connected",
         "address": f"10.0.0.{c + 1}"}
        for c in (0, 1, 2)
    ]  # fmt: skip
    for r in rounds:
        for c in r["clients"]:
            report = {
                "kind": "client", "seconds": r["seconds"] - 0.001, "round": r["round"],
                "client": c, "status": "trained", "node": node_of(c),
                "address": f"10.0.0.{c + 1}", "samples": 100, "loss": 2.0 - 0.1 * c,
                "train_seconds": 0.01 * (c + 1),
            }  # fmt: skip
            if c != 2:
                report["val_accuracy"] = 0.5 + 0.1 * c + 0.01 * r["round"]
            events.append(report)
    return events


def next_round(rank_file: Path, lost: int | None = None) -> list[dict]:
    """The events of one more round after the last in rank_file: client reports, the round,
    its eval; `lost` is a client that did not answer (it fails the round)."""
    old = [json.loads(line) for line in rank_file.read_text().splitlines() if line.strip()]
    last = max(e["round"] for e in old if e["kind"] == "round")
    at = max(e["seconds"] for e in old) + 1.0
    events = [
        {"kind": "client", "seconds": at - 0.1, "round": last + 1, "client": c,
         "status": "trained", "node": node_of(c), "address": f"10.0.0.{c + 1}", "samples": 100,
         "loss": 1.5, "train_seconds": 0.2, "val_accuracy": 0.8}
        for c in (0, 1, 2) if c != lost
    ]  # fmt: skip
    if lost is not None:
        events.append(
            {
                "kind": "client",
                "seconds": at - 0.1,
                "round": last + 1,
                "client": lost,
                "status": "lost",
                "node": node_of(lost),
                "reason": "lost: no reply",
            }
        )
    events.append(
        {
            "kind": "round",
            "seconds": at,
            "round": last + 1,
            "loss": 1.5,
            "samples": 300,
            "duration": 0.5,
            "aggregate_seconds": 0.05,
            "clients": [0, 1, 2],
            "failed": [lost] if lost is not None else [],
            "rejected": [],
            "attempts": 1,
        }
    )
    events.append({"kind": "eval", "seconds": at + 0.01, "loss": 1.2, "accuracy": 0.7,
                   "round": last + 1})  # fmt: skip
    return events


def make_live(runs: Path, finished: Path) -> Path:
    """A copy of a finished FedAvg run made to look as it did mid-run: no summary, no merged
    events, and the clients' own events in the server's rank file."""
    live = runs / "live"
    shutil.copytree(finished, live)
    (live / "summary.json").unlink()
    (live / "events.jsonl").unlink()
    rank_file = live / "events" / "rank-0.jsonl"
    old = [json.loads(line) for line in rank_file.read_text().splitlines()]
    append_events(rank_file, client_reports([e for e in old if e["kind"] == "round"]))
    return live


def make_runs(root: Path) -> Path:
    """RUNS_DIR with fed (finished FedAvg), live (that run mid-run, deployed), ar (allreduce
    on 2 processes), failed (a centralized run that raised) and a sweep with one cell."""
    runs = root / "runs"
    run(make_config(root, name="fed", strategy=FED))
    run(make_config(root, name="ar", strategy="allreduce", workers=2))
    with pytest.raises(RunFailed):
        run(make_config(root, name="failed", fault={"rank": 0, "step": 2}))
    make_live(runs, runs / "fed")
    sweep = runs / "sweep"
    sweep.mkdir()
    shutil.copytree(runs / "fed", sweep / "workers=1")
    cells = [
        {"name": "workers=1", "status": "completed"},
        {"name": "workers=2", "status": "pending"},
    ]
    (sweep / "sweep.json").write_text(json.dumps({"name": "sweep", "cells": cells}))
    return runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return make_runs(tmp_path_factory.mktemp("dashboard"))


@pytest.fixture
def live(runs, tmp_path) -> Path:
    """A fresh copy of the live run, alone in its RUNS_DIR, for tests that write to it."""
    shutil.copytree(runs / "live", tmp_path / "live")
    return tmp_path


def by_path(listing: dict) -> dict[str, dict]:
    return {r["path"]: r for r in listing["runs"]}


def test_the_list_holds_every_run_and_the_sweeps_cells(runs):
    listing = list_runs(runs)
    rows = by_path(listing)
    assert set(rows) == {"fed", "live", "ar", "failed", "sweep/workers=1"}
    assert rows["sweep/workers=1"]["group"] == "sweep" and rows["fed"]["group"] is None
    assert listing["sweeps"] == [
        {"path": "sweep", "name": "sweep", "cells": 2, "status": {"completed": 1, "pending": 1}}
    ]
    summary = json.loads((runs / "fed" / "summary.json").read_text())
    fed = rows["fed"]
    assert (fed["strategy"], fed["status"], fed["rounds"]) == ("fedavg", "completed", 2)
    assert fed["accuracy"] == summary["final_accuracy"]
    assert abs(fed["started"] - time.time()) < 600
    assert rows["ar"]["steps"] == json.loads((runs / "ar" / "summary.json").read_text())["steps"]


def test_a_failed_run_shows_its_error(runs):
    failed = by_path(list_runs(runs))["failed"]
    assert failed["status"] == "failed"
    assert "injected fault" in failed["error"]


def test_a_run_without_summary_is_running_until_its_files_stand_still(runs):
    now = time.time()
    assert by_path(list_runs(runs, now))["live"]["status"] == "running"
    assert by_path(list_runs(runs, now + 3600))["live"]["status"] == "stale"
    # a finished run stays what its summary says, however old
    assert by_path(list_runs(runs, now + 3600))["fed"]["status"] == "completed"


def test_a_running_run_counts_from_its_rank_files(runs):
    row = by_path(list_runs(runs))["live"]
    assert (row["rounds"], row["unit"], row["total"]) == (2, "round", 2)
    evals = [json.loads(x) for x in (runs / "fed" / "events.jsonl").read_text().splitlines()]
    assert row["accuracy"] == [e for e in evals if e["kind"] == "eval"][-1]["accuracy"]


def test_a_half_written_last_line_waits_for_its_newline(live):
    rank_file = live / "live" / "events" / "rank-0.jsonl"
    reader = RunsReader(live)
    before = reader.detail("live")["progress"]["rounds"]
    line = json.dumps(next_round(rank_file)[-2])  # the round event
    with open(rank_file, "a") as fh:
        fh.write(line[:25])
    assert reader.detail("live")["progress"]["rounds"] == before
    with open(rank_file, "a") as fh:
        fh.write(line[25:] + "\n")
    assert reader.detail("live")["progress"]["rounds"] == before + 1
    assert run_detail(live, "live")["progress"]["rounds"] == before + 1


def test_deployed_clients_fill_the_clients_table(runs):
    fed = run_detail(runs, "live")["federated"]
    clients = {c["client"]: c for c in fed["clients"]}
    assert sorted(clients) == [0, 1, 2]
    zero = clients[0]
    assert zero["node"] == str(node_of(0)) and isinstance(zero["node"], str)
    assert (zero["address"], zero["status"], zero["rounds"]) == ("10.0.0.1", "trained", 2)
    rounds = [json.loads(x) for x in (runs / "fed" / "events.jsonl").read_text().splitlines()]
    rounds = [e for e in rounds if e["kind"] == "round"]
    assert zero["last_seen"] == pytest.approx(rounds[-1]["seconds"] - 0.001)
    assert zero["val_accuracy"] == pytest.approx(0.52) and clients[2]["val_accuracy"] is None


def test_rounds_split_their_time_into_training_transfer_and_aggregation(runs):
    fed = run_detail(runs, "live")["federated"]
    first = fed["rounds"][0]
    assert (first["sampled"], first["failed"], first["rejected"]) == ([0, 1, 2], [], {})
    assert first["training"] == pytest.approx(0.03)  # the slowest of 0.01, 0.02, 0.03
    expected = first["duration"] - 0.03 - first["aggregation"]
    assert first["transfer"] == pytest.approx(max(0.0, expected), abs=1e-6)
    assert first["transfer"] >= 0 and first["unsplit"] is None
    assert sorted(fed["train_seconds"]) == pytest.approx([0.01, 0.01, 0.02, 0.02, 0.03, 0.03])
    assert fed["val_accuracy"] == [
        {"round": 1, "values": pytest.approx([0.51, 0.61])},
        {"round": 2, "values": pytest.approx([0.52, 0.62])},
    ]


def test_a_lost_client_fails_its_round_with_its_reason(live):
    rank_file = live / "live" / "events" / "rank-0.jsonl"
    append_events(rank_file, next_round(rank_file, lost=1))
    append_events(
        rank_file,
        [
            {
                "kind": "client",
                "seconds": 99.0,
                "client": 0,
                "node": NODE + 9,
                "status": "refused",
                "reason": "partition id 0 already connected",
            }
        ],
    )
    fed = run_detail(live, "live")["federated"]
    last = fed["rounds"][-1]
    assert last["round"] == 3 and last["failed"] == [1] and last["rejected"] == {}
    assert last["lost"] == {"1": "lost: no reply"}
    clients = {c["client"]: c for c in fed["clients"]}
    assert (clients[1]["status"], clients[1]["reason"], clients[1]["rounds"]) == (
        "lost", "lost: no reply", 2)  # fmt: skip
    assert clients[0]["status"] == "trained" and clients[0]["rounds"] == 3
    assert fed["refused"] == [{"client": 0, "node": str(NODE + 9), "seconds": 99.0,
                               "reason": "partition id 0 already connected"}]  # fmt: skip


def test_a_finished_run_shows_what_it_did_and_a_running_one_its_plan(runs, tmp_path):
    # An asynchronous parameter server's lead rank ends with fewer steps than it planned:
    # a plan of more steps than were done, in a finished run's events.
    shutil.copytree(runs / "ar", tmp_path / "ar")
    merged = tmp_path / "ar" / "events.jsonl"
    events = [json.loads(line) for line in merged.read_text().splitlines()]
    steps = json.loads((tmp_path / "ar" / "summary.json").read_text())["steps"]
    for event in events:
        if event.get("phase") == "train":
            event["total"] = steps + 16
    merged.write_text("".join(json.dumps(e) + "\n" for e in events))

    finished = run_detail(tmp_path, "ar")["progress"]
    running = run_detail(runs, "live")["progress"]

    assert (finished["steps"], finished["total"]) == (steps, None)
    assert (running["rounds"], running["total"]) == (2, 2)


def test_in_process_clients_come_from_round_events_and_unknowns_are_null(runs):
    fed = run_detail(runs, "fed")["federated"]
    assert [c["client"] for c in fed["clients"]] == [0, 1, 2]
    assert all(c["rounds"] == 2 and c["status"] == "trained" for c in fed["clients"])
    assert all(c["address"] is None and c["node"] is None for c in fed["clients"])
    first = fed["rounds"][0]
    assert first["training"] is None and first["transfer"] is None
    assert first["unsplit"] == pytest.approx(first["duration"] - first["aggregation"], abs=1e-6)
    assert fed["train_seconds"] == [] and fed["val_accuracy"] == []


def test_a_finished_run_is_read_from_its_merged_events(runs, tmp_path):
    shutil.copytree(runs / "fed", tmp_path / "fed")
    reader = RunsReader(tmp_path)
    before = reader.detail("fed")
    merged = (tmp_path / "fed" / "events.jsonl").read_text().splitlines()
    assert before["events"] == len(merged)
    append_events(tmp_path / "fed" / "events" / "rank-0.jsonl", client_reports([]))
    assert reader.detail("fed")["federated"]["clients"] == before["federated"]["clients"]


def test_data_parallel_runs_show_step_times_and_bytes_per_rank(runs):
    detail = run_detail(runs, "ar")
    summary = json.loads((runs / "ar" / "summary.json").read_text())
    assert detail["federated"] is None
    ranks = {r["rank"]: r for r in detail["ranks"]}
    assert sorted(ranks) == [0, 1]
    assert ranks[0]["steps"] == summary["steps"] and len(ranks[0]["duration"]) == summary["steps"]
    assert ranks[0]["step_mean"] > 0
    for rank in ("0", "1"):
        counted, row = summary["bytes_per_rank"][rank], ranks[int(rank)]
        assert row["bytes_sent"] == counted["bytes_sent"]
        assert row["bytes_recv"] == counted["bytes_recv"]
    curves = detail["curves"]
    assert curves["unit"] == "step" and len(curves["train"]["x"]) == summary["steps"]
    assert curves["eval"]["accuracy"][-1] == summary["final_accuracy"]


@pytest.mark.parametrize("path", ["../runs/..", "/etc", "fed/events", "nothing", "fed/../.."])
def test_paths_outside_runs_dir_or_not_runs_are_refused(runs, path):
    assert run_detail(runs, path) is None
