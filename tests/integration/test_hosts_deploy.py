"""Flower's deployment engine across two hosts, as a user sets it up: certificates made on
hosta (the server) and copied to hostb, `distlab deploy server` on hosta bound to its link
address with TLS and node authentication, two `distlab deploy client`s on hostb, a FedAvg
run that completes. From hostb, a client that does not have the server's CA, a client with a
key the server never registered and a caller of the Control API are each refused, and the
run goes on undisturbed. Ctrl-C ends the clients; no Flower process is left on either host.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import wait_for_line
from tests.hosts import HOST_DIR, Host, wait_all

pytestmark = pytest.mark.slow

DEPLOY = (sys.executable, "-m", "distlab", "deploy")
FLWR = str(Path(sys.executable).parent / "flwr")
SERVER = "10.77.0.1"  # hosta's link address
FLEET, SERVERAPPIO, CONTROL = 9092, 9091, 9093  # Flower's default ports
# What a user copies from the server to a client machine (never ca.key or server.key).
CLIENT_FILES = ("ca.pem", "client-0.key", "client-1.key")
# A small probe of a TCP port from a host: 'open', or why not, in one line.
DIAL = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()\n"
    "    print('open')\n"
    "except OSError as exc:\n"
    "    sys.exit(f'refused: {exc}')\n"
)


def in_home(host: Host, *argv: str) -> list[str]:
    """`argv` run from the host's own directory, as a user in their home would."""
    return ["sh", "-c", 'cd "$0" && exec "$@"', str(HOST_DIR), *argv]


def deploy(host: Host, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return host.run(in_home(host, *DEPLOY, *args), timeout=timeout)


def one_line(done: subprocess.CompletedProcess, *parts: str) -> str:
    """The single error line of a refused command (exit 2, no traceback)."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, (done.returncode, done.stderr)
    assert lines[0].startswith("error: ") and "Traceback" not in done.stdout, done.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def make_certificates(a: Host, b: Host) -> None:
    """The deployment's material on hosta, what a client needs scp'd to hostb, and on hostb
    a CA and node key of its own that the server knows nothing of."""
    made = deploy(a, "certs", "--out", "certs", "--server-names", f"hosta,{SERVER}",
                  "--clients", "2")  # fmt: skip
    assert made.returncode == 0, made.stderr
    (b.home / "certs").mkdir()
    for name in CLIENT_FILES:
        shutil.copy2(a.home / "certs" / name, b.home / "certs" / name)
    rogue = deploy(b, "certs", "--out", "rogue", "--server-names", "hostb", "--clients", "1")
    assert rogue.returncode == 0, rogue.stderr


def control_call(b: Host) -> subprocess.Popen:
    """Flower's own CLI on hostb asking the server's Control API for its runs, with the
    server's CA at hand: the call `flwr run` makes to start a run."""
    home = b.home / "flwr"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "hosta"\n\n[superlink.hosta]\n'
        f'address = "{SERVER}:{CONTROL}"\nroot-certificates = "{HOST_DIR}/certs/ca.pem"\n'
    )
    env = {"FLWR_HOME": str(HOST_DIR / "flwr"), "NO_COLOR": "1"}
    return b.popen([FLWR, "ls", "hosta", "--format", "json"], env=env)


def dial(host: Host, port: int) -> subprocess.CompletedProcess:
    return host.run([sys.executable, "-c", DIAL, SERVER, str(port)], timeout=30)


def check_refusals(b: Host) -> None:
    """A client with hostb's own CA and one with hostb's own key, at once (each on a
    ClientAppIo port of its own), and the Control and ServerAppIo ports from hostb."""
    common = ("client", "--server", f"{SERVER}:{FLEET}", "--num-partitions", "2",
              "--partition-id", "0")  # fmt: skip
    wrong_ca = ("--ca", "rogue/ca.pem", "--key", "certs/client-0.key", "--port", "9096")
    unknown_key = ("--ca", "certs/ca.pem", "--key", "rogue/client-0.key", "--port", "9097")
    procs = [b.popen(in_home(b, *DEPLOY, *common, *extra)) for extra in (wrong_ca, unknown_key)]
    (ca_rc, _, ca_err), (key_rc, _, key_err) = wait_all(procs, 90)
    one_line(subprocess.CompletedProcess([], ca_rc, "", ca_err), "not signed by --ca rogue/ca.pem")
    one_line(subprocess.CompletedProcess([], key_rc, "", key_err), "refused this node's key")
    assert dial(b, FLEET).stdout.strip() == "open"
    for port in (CONTROL, SERVERAPPIO):  # loopback only on hosta
        probe = dial(b, port)
        assert probe.returncode == 1 and probe.stderr.strip().splitlines() == [
            "refused: [Errno 111] Connection refused"
        ], probe.stderr


def start_clients(b: Host) -> list[subprocess.Popen]:
    """The two registered clients on hostb; both have joined when this returns."""
    clients = []
    for i in range(2):
        argv = (*DEPLOY, "client", "--server", f"{SERVER}:{FLEET}", "--num-partitions", "2",
                "--partition-id", str(i), "--ca", "certs/ca.pem", "--key",
                f"certs/client-{i}.key", "--port", str(9094 + i))  # fmt: skip
        clients.append(b.popen(in_home(b, *argv)))
    for i, proc in enumerate(clients):
        assert f"client {i} joined {SERVER}:{FLEET}" in wait_for_line(proc, "joined", 90)
    return clients


def ctrl_c(procs: list[subprocess.Popen]) -> list[tuple]:
    """SIGINT to each command's process group, as Ctrl-C in its terminal sends it."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
    return wait_all(procs, 30)


def no_processes(*hosts: Host, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while any(h.pids() for h in hosts) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not any(h.pids() for h in hosts)


def check_run(a: Host, b: Host, out: str) -> None:
    """The run directory, on hosta only: completed, both clients from hostb in every round."""
    run_dir = a.home / "runs" / "fed"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 2, summary
    log = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    joined = [e for e in log if e["kind"] == "client" and e["status"] == "connected"]
    assert sorted(e["client"] for e in joined) == [0, 1]
    assert {e.get("address") for e in joined} == {"hostb"}, joined
    rounds = [e for e in log if e["kind"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["clients"] == [0, 1] and r["failed"] == r["rejected"] == [] for r in rounds)
    assert "client 0 connected from hostb" in out and "round 2: loss" in out, out
    assert not (b.home / "runs").exists()
    assert not list((run_dir / "deploy").rglob("*.key")), "private keys stay in certs/"


def test_a_federation_across_two_hosts_refuses_strangers(two_hosts):
    a, b = two_hosts
    make_certificates(a, b)
    server = a.popen(
        in_home(a, *DEPLOY, "server", "--certs", "certs", "--host", SERVER, "--clients", "2",
                "--rounds", "2", "--dataset", "synthetic", "--model", "mlp", "--out-dir",
                "runs", "--name", "fed", "--connect-timeout", "120", "--set", "threads=1")
    )  # fmt: skip
    procs = [server]
    try:
        wait_for_line(server, f"SuperLink on {SERVER}:{FLEET}; waiting for 2 clients", 60)
        control = control_call(b)
        procs.append(control)
        check_refusals(b)
        assert server.poll() is None, "the refusals must not end the server"
        clients = start_clients(b)
        procs += clients
        out, err = server.communicate(timeout=180)
        assert server.returncode == 0, err[-2000:]
        # flwr exits 0 in its JSON mode and says the failure in the document
        (_, said, why), *_ = wait_all([control], 60)
        refusal = json.loads(said)
        assert refusal["success"] is False, (said, why)
        assert (
            refusal["error-message"]
            .splitlines()[-1]
            .startswith("Connection to the SuperLink is unavailable")
        )
        for rc, _, err in ctrl_c(clients):
            assert rc == 130 and err.strip().splitlines()[-1].endswith("left the federation")
        assert no_processes(a, b), (a.pids(), b.pids())
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
    check_run(a, b, out)
