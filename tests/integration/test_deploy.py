"""Deployed federated learning on Flower's real SuperLink and SuperNodes, over loopback with
TLS and node authentication: the run equals the in-process one, the server and clients
work as separate commands, an unregistered key and a client without TLS are refused, and
Ctrl-C leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from tests.conftest import cli, headless_chromium, wait_for_line

from distlab.deploy.certs import make_certs
from distlab.deploy.processes import free_port

pytestmark = pytest.mark.slow

FLOWER = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr-serverapp",
          "flwr-clientapp")  # fmt: skip


def flower_processes(marker: str) -> list[psutil.Process]:
    """Flower processes whose command line names `marker` (a run's directory or port)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if any(name in line for name in FLOWER) and marker in line:
            found.append(proc)
    return found


def no_flower_left(marker: str, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while flower_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not flower_processes(marker)


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def test_a_local_federation_stopped_with_ctrl_c_and_resumed_equals_the_in_process_run(tmp_path):
    """Ctrl-C after round 2's checkpoint stops the SuperLink and every SuperNode and records
    the run as interrupted; `--resume` runs round 3 on a new SuperLink and new SuperNodes,
    and the result is the in-process run's."""
    args = ("--clients", "3", "--strategy", "fedavg", "--rounds", "3")
    where = ("--out-dir", str(tmp_path / "DIR"), "--name", "N")
    run_dir = tmp_path / "DIR" / "N"
    proc = start("deploy", "local", *args, *where, "--set", "checkpoint.every=1", cwd=tmp_path)
    try:
        wait_for_line(proc, "round 2:", 180)
        checkpoint = run_dir / "checkpoints" / "round-00000002" / "rank-0.json"
        wait_until(checkpoint.is_file, 60, "round 2's checkpoint")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("error: interrupted")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    assert no_flower_left(str(run_dir))

    done = cli("deploy", "local", "--resume", str(run_dir), cwd=tmp_path, timeout=300)

    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_at"] == [2]
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "events.jsonl", "model.pt",
                                                    "summary.json", "deploy"}  # fmt: skip
    assert json.loads((run_dir / "config.json").read_text())["strategy"]["executor"] == "flower"
    assert no_flower_left(str(run_dir))
    assert not list((run_dir / "deploy").rglob("*.key")), "private keys must not stay"

    same = cli("run", *args, "--workers", "3", "--set", "strategy.executor=processes",
               "--out-dir", str(tmp_path / "DIR"), "--name", "in-process", "--json")  # fmt: skip
    assert same.returncode == 0, same.stderr[-2000:]
    reference = json.loads(same.stdout)
    # Same data, schedule and aggregation order: only float summation order may differ
    # (measured: none; the weights came out equal bit for bit).
    assert abs(summary["final_accuracy"] - reference["final_accuracy"]) <= 0.02
    deployed = torch.load(run_dir / "model.pt", weights_only=True)
    in_process = torch.load(tmp_path / "DIR" / "in-process" / "model.pt", weights_only=True)
    assert max((deployed[k] - in_process[k]).abs().max().item() for k in deployed) < 1e-4

    log = events(run_dir)
    joined = {e["client"] for e in log if e["kind"] == "client" and e["status"] == "connected"}
    assert joined == {0, 1, 2}
    rounds = [e for e in log if e["kind"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2, 3]  # each once: the events went on
    assert all(r["clients"] == [0, 1, 2] and r["rejected"] == r["failed"] == [] for r in rounds)
    # what ran: three SuperNodes (client hosts), and the ServerApp with them
    assert (summary["workers"], summary["processes"]) == (3, 4)
    trained = [e for e in log if e["kind"] == "client" and e.get("status") == "trained"]
    assert len(trained) == 9 and all(e["train_seconds"] > 0 for e in trained)
    # Bytes measured on the wire's records: the model down and up for every client.
    assert summary["bytes_per_round_measured"] >= summary["bytes_per_round_logical"]


def start(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "distlab", *args],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_server_and_clients_as_separate_commands_and_refusals(tmp_path):
    certs = make_certs(tmp_path / "certs", ["localhost", "127.0.0.1"], 3)
    port = free_port()
    server = start(
        "deploy", "server", "--certs", str(certs.root), "--keys", str(certs.client_pub(0)),
        "--keys", str(certs.client_pub(1)), "--clients", "2", "--rounds", "2",
        "--host", "127.0.0.1", "--port", str(port), "--control-port", str(free_port()),
        "--serverappio-port", str(free_port()), "--out-dir", "runs", "--name", "served",
        cwd=tmp_path,
    )  # fmt: skip
    clients = []
    try:
        wait_for_line(server, "waiting for 2 clients", 60)
        common = ("--server", f"127.0.0.1:{port}", "--num-partitions", "2")

        # A key the server did not register (client-2's) is refused, in one line.
        refused = cli("deploy", "client", *common, "--partition-id", "1", "--ca", str(certs.ca),
                      "--key", str(certs.client_key(2)), "--port", str(free_port()),
                      "--work-dir", "c2", cwd=tmp_path, timeout=90)  # fmt: skip
        assert refused.returncode == 2
        assert "refused this node's key" in refused.stderr and refused.stderr.count("\n") == 1

        # A client without TLS cannot join a TLS server.
        plain = cli("deploy", "client", *common, "--partition-id", "1", "--insecure",
                    "--join-timeout", "8", "--port", str(free_port()), "--work-dir", "c3",
                    cwd=tmp_path, timeout=90)  # fmt: skip
        assert plain.returncode == 2 and "did not join" in plain.stderr, plain.stderr

        for i in range(2):
            clients.append(
                start(
                    "deploy",
                    "client",
                    *common,
                    "--partition-id",
                    str(i),
                    "--ca",
                    str(certs.ca),
                    "--key",
                    str(certs.client_key(i)),
                    "--port",
                    str(free_port()),
                    "--work-dir",
                    f"c{i}",
                    cwd=tmp_path,
                )
            )
        for proc in clients:
            wait_for_line(proc, "joined", 60)
        out, err = server.communicate(timeout=240)
        assert server.returncode == 0, err[-2000:]
    finally:
        for proc in [server, *clients]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
    for proc in clients:  # a client leaves on SIGTERM, taking its SuperNode along
        assert proc.wait(30) == 143
    summary = json.loads((tmp_path / "runs" / "served" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 2
    assert no_flower_left(str(port))
    assert no_flower_left(str(tmp_path))


def supernode_of(deploy: subprocess.Popen, client: int) -> psutil.Process:
    """The SuperNode process that `deploy local` started for `client`."""
    for child in psutil.Process(deploy.pid).children(recursive=True):
        line = " ".join(child.cmdline())
        if "flower-supernode" in line and f"partition-id={client} " in line:
            return child
    raise AssertionError(f"no SuperNode for client {client}")


def wait_until(check, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_supernode_is_named_and_the_dashboard_follows_the_run(tmp_path):
    """Fault test and live dashboard at once: client 2's SuperNode (its whole process
    group, as when its machine dies) is killed once all three have joined; the run completes
    with the other two and names the lost client, while a real browser on `distlab
    dashboard` shows the three clients, the round counter advancing and the charts."""
    port = free_port()
    deploy = start("deploy", "local", "--clients", "3", "--rounds", "2", "--set",
                   "strategy.min_clients=2", "--out-dir", "runs", "--name", "faulty",
                   cwd=tmp_path)  # fmt: skip
    board, page = None, None
    try:
        for _ in range(3):
            wait_for_line(deploy, "connected", 120)
        board = start("dashboard", "runs", "--port", str(port), cwd=tmp_path)  # runs/ exists
        os.killpg(supernode_of(deploy, 2).pid, signal.SIGKILL)
        wait_for_line(board, "dashboard: http", 60)  # serving before the browser asks
        page = headless_chromium()
        page.get(f"http://127.0.0.1:{port}/#run=faulty")
        script = "return document.querySelectorAll('tr.client-row').length"
        wait_until(lambda: page.execute_script(script) == 3, 60, "three client rows")
        counter = "return document.getElementById('round-counter').textContent"
        first = page.execute_script(counter)
        wait_until(lambda: page.execute_script(counter).strip().startswith("2"), 180,
                   "the round counter to reach 2")  # fmt: skip
        charts = page.execute_script(
            "return Array.from(document.querySelectorAll('.main-svg'))"
            ".filter(s => s.getBoundingClientRect().width > 0 && s.querySelector('path')).length"
        )
        assert charts >= 3, charts
        out, err = deploy.communicate(timeout=120)
    finally:
        if page is not None:
            page.quit()
        for proc in (deploy, board):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    assert deploy.returncode == 0, err[-2000:]
    assert not first.strip().startswith("2")
    run_dir = tmp_path / "runs" / "faulty"
    log = events(run_dir)
    lost = [e for e in log if e["kind"] == "client" and e.get("status") == "lost"]
    assert lost and {e["client"] for e in lost} == {2}, lost
    assert all(e["reason"] for e in lost), lost
    rounds = [e for e in log if e["kind"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2]
    # The kill may land after client 2 took round 1's message; from then on it fails its
    # rounds. Rejected is for replies that came and were unusable (NaN, wrong shape): none.
    assert all(set(r["failed"]) <= {2} and r["rejected"] == [] for r in rounds)
    assert rounds[-1]["failed"] == [2] and rounds[-1]["samples"] > 0
    assert "failed 2" in out and "rejected" not in out, out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    # the killed SuperNode took part too: three client hosts, and the ServerApp with them
    assert (summary["workers"], summary["processes"]) == (3, 4)
    assert no_flower_left(str(run_dir))
