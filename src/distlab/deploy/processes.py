"""Starting, watching and stopping Flower's SuperLink and SuperNodes, and talking to the
SuperLink's Control API through Flower's own `flwr` command.

What listens where (Flower 1.32): the SuperLink's Fleet API (SuperNodes connect to it: TLS,
node authentication) on the address the user picks; its Control API (starts runs, registers
node keys, has no authentication in the open-source release) and ServerAppIo API (the
ServerApp process) on 127.0.0.1 only; each SuperNode's ClientAppIo API on 127.0.0.1 only.
Flower's own defaults bind all but the Fleet API to 0.0.0.0; distlab never does.

Every process is started in a session of its own with a parent-death signal, so a killed
distlab command takes its SuperLink or SuperNode with it, and `stop` ends the whole group
(the ServerApp and ClientApp processes Flower starts below them included).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from distlab.runtime.signals import set_parent_death_signal

LOOPBACK = "127.0.0.1"
FLEET_PORT = 9092
SERVERAPPIO_PORT = 9091
CONTROL_PORT = 9093
CLIENTAPPIO_PORT = 9094
CONNECTION = "distlab"  # the SuperLink connection's name in FLWR_HOME/config.toml
STOP_GRACE = 5.0
# Flower colours its log lines; a line quoted in an error message is plain text.
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class DeployError(RuntimeError):
    """A deployed process died or refused us; the message names it and what it said."""


def flower_command(name: str) -> str:
    """A Flower console script installed beside this Python."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    raise ValueError(
        f"{name} is not installed: install the deploy extra (pip install 'distlab[deploy]')"
    )


def split_address(text: str, what: str) -> tuple[str, int]:
    """'host:port' -> (host, port); ValueError naming `what`."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} {text!r} is not HOST:PORT (for example 10.0.0.5:9092)")
    return host.strip("[]"), int(port)


def check_port_free(host: str, port: int, what: str) -> None:
    """ValueError when `port` on `host` cannot be bound (in use, or not this machine's)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = "in use" if exc.errno == 98 else exc.strerror
            raise ValueError(f"{what} port {port} on {host} is {reason}; pick another") from None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def wait_reachable(host: str, port: int, seconds: float, what: str) -> None:
    """ValueError unless a TCP connection to host:port opens within `seconds`."""
    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=min(3.0, seconds)):
                return
        except OSError as exc:
            last = exc.strerror or str(exc)
            time.sleep(0.5)
    raise ValueError(f"cannot reach {what} at {host}:{port} within {seconds:g} s ({last})")


@dataclass
class Managed:
    """One started process and where its output goes."""

    name: str
    process: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 3) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(ANSI.sub("", line).strip() for line in text[-lines:])

    def stop(self) -> None:
        """SIGTERM to the whole group (Flower's own helpers included), SIGKILL to what is
        left after a grace period; returns when every process of the group is gone."""
        pgid = self.process.pid
        signal_group(pgid, signal.SIGTERM)
        if not self.wait_gone(STOP_GRACE):
            signal_group(pgid, signal.SIGKILL)
            self.wait_gone(STOP_GRACE)

    def wait_gone(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.process.poll()  # reap the leader, or it stays in the group as a zombie
            if not group_alive(self.process.pid):
                return True
            time.sleep(0.05)
        return False


def signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def flower_env(extra: dict | None = None) -> dict:
    """The environment of a Flower process: it starts its helpers (flower-superexec,
    flwr-serverapp, flwr-clientapp) by name, so this Python's scripts come first on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, **(extra or {})}


def start(name: str, argv: list[str], log: Path, env: dict | None = None) -> Managed:
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "wb")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: set_parent_death_signal(signal.SIGTERM),
        env=flower_env(env),
    )
    out.close()
    return Managed(name, process, log)


def wait_listening(proc: Managed, host: str, port: int, seconds: float) -> None:
    """Until `proc` accepts connections on host:port; DeployError when it dies first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not proc.alive():
            raise DeployError(f"{proc.name} exited ({proc.process.returncode}): {proc.tail()}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise DeployError(f"{proc.name} did not open port {port} within {seconds:g} s: {proc.tail()}")


# --- the server side ----------------------------------------------------------------------


@dataclass
class LinkAddresses:
    """Where the SuperLink's three APIs listen."""

    fleet_host: str = "0.0.0.0"
    fleet_port: int = FLEET_PORT
    control_port: int = CONTROL_PORT
    serverappio_port: int = SERVERAPPIO_PORT

    @property
    def control(self) -> str:
        return f"{LOOPBACK}:{self.control_port}"

    def check_free(self) -> None:
        check_port_free(self.fleet_host, self.fleet_port, "Fleet API")
        check_port_free(LOOPBACK, self.control_port, "Control API")
        check_port_free(LOOPBACK, self.serverappio_port, "ServerAppIo API")


@dataclass
class SuperLink:
    """A started SuperLink and the Flower home its `flwr` calls use."""

    proc: Managed
    addresses: LinkAddresses
    home: Path
    ca: Path | None

    def flwr(self, *args: str, timeout: float = 120.0) -> str:
        """`flwr ARGS... distlab` against this SuperLink; its stdout, DeployError on failure."""
        argv = [flower_command("flwr"), *args]
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=flower_env({"FLWR_HOME": str(self.home), "NO_COLOR": "1"}),
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0 or '"success": false' in result.stdout:
            said = (result.stdout + result.stderr).strip().splitlines()
            raise DeployError(
                f"flwr {args[0]} {args[1] if len(args) > 1 else ''} failed: {' '.join(said[-3:])}"
            )
        return result.stdout


def start_superlink(
    work: Path, addresses: LinkAddresses, certs=None, insecure: bool = False, auth: bool = True
) -> SuperLink:
    """A SuperLink with TLS (unless insecure) and node authentication (unless not auth);
    the Control and ServerAppIo APIs on loopback only. Waits until its Control API answers."""
    argv = [
        flower_command("flower-superlink"),
        "--fleet-api-address",
        f"{addresses.fleet_host}:{addresses.fleet_port}",
        "--control-api-address",
        addresses.control,
        "--serverappio-api-address",
        f"{LOOPBACK}:{addresses.serverappio_port}",
        "--disable-runtime-dependency-installation",
        "--database",
        str(work / "superlink.db"),
    ]
    if insecure:
        argv.append("--insecure")
    else:
        argv += [
            "--ssl-ca-certfile",
            str(certs.ca),
            "--ssl-certfile",
            str(certs.server),
            "--ssl-keyfile",
            str(certs.server_key),
        ]
    if auth:
        argv.append("--enable-supernode-auth")
    home = work / "flwr-home"
    write_connection(home, addresses.control, None if insecure else certs.ca)
    proc = start("SuperLink", argv, work / "logs" / "superlink.log", {"FLWR_HOME": str(home)})
    link = SuperLink(proc, addresses, home, None if insecure else certs.ca)
    try:
        wait_listening(proc, LOOPBACK, addresses.control_port, 60)
        fleet_host = LOOPBACK if addresses.fleet_host in ("0.0.0.0", "::") else addresses.fleet_host
        wait_listening(proc, fleet_host, addresses.fleet_port, 60)
    except BaseException:
        proc.stop()
        raise
    return link


def write_connection(home: Path, control: str, ca: Path | None) -> None:
    """FLWR_HOME/config.toml naming this SuperLink's Control API for the `flwr` calls."""
    home.mkdir(parents=True, exist_ok=True)
    lines = [
        "[superlink]",
        f'default = "{CONNECTION}"',
        "",
        f"[superlink.{CONNECTION}]",
        f'address = "{control}"',
    ]
    # Flower reads the certificate's path only as an absolute one.
    lines.append(f'root-certificates = "{Path(ca).absolute()}"' if ca else "insecure = true")
    (home / "config.toml").write_text("\n".join(lines) + "\n")


def register_nodes(link: SuperLink, public_keys: list[Path]) -> list[int]:
    """Register each SuperNode public key with the SuperLink; the node ids it assigned."""
    ids = []
    for key in public_keys:
        out = link.flwr("supernode", "register", str(key), CONNECTION, "--format", "json")
        ids.append(parse_json_field(out, "node_id"))
    return ids


def submit(link: SuperLink, app_dir: Path, job: Path) -> int:
    """Start distlab's app on the SuperLink; the run id."""
    out = link.flwr(
        "run", str(app_dir), CONNECTION, "--run-config", f'job="{job}"', "--format", "json"
    )
    return parse_json_field(out, "run-id")


def stop_run(link: SuperLink, run_id: int) -> None:
    try:
        link.flwr("stop", str(run_id), CONNECTION, timeout=30)
    except (DeployError, subprocess.TimeoutExpired, OSError):
        pass


def parse_json_field(text: str, key: str):
    """A field of the JSON document a `flwr ... --format json` call printed."""
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else {}
    except ValueError:
        data = {}
    for name in (key, key.replace("-", "_"), key.replace("_", "-")):
        if name in data:
            return int(data[name])
    raise DeployError(f"flwr printed no {key}: {text.strip()[:200]}")


# --- the client side ----------------------------------------------------------------------


def start_supernode(
    work: Path,
    server: str,
    partition_id: int,
    num_partitions: int,
    key: Path | None,
    ca: Path | None,
    clientappio_port: int = CLIENTAPPIO_PORT,
    data_dir: Path | None = None,
    local_data: bool = False,
    threads: int = 1,
) -> Managed:
    """A SuperNode for client `partition_id`: TLS with `ca` (None = insecure), node
    authentication with `key` (None = none); its ClientAppIo API on loopback only."""
    node_config = [
        f"partition-id={partition_id}",
        f"num-partitions={num_partitions}",
        f"threads={threads}",
    ]
    if data_dir is not None:
        node_config.append(f'data-dir="{Path(data_dir).resolve()}"')
    if local_data:
        node_config.append('local-data="true"')
    argv = [
        flower_command("flower-supernode"),
        "--superlink",
        server,
        "--clientappio-api-address",
        f"{LOOPBACK}:{clientappio_port}",
        "--node-config",
        " ".join(node_config),
    ]
    argv += ["--insecure"] if ca is None else ["--root-certificates", str(ca)]
    if key is not None:
        argv += ["--auth-supernode-private-key", str(key)]
    log = work / "logs" / f"supernode-{partition_id}.log"
    env = {"OMP_NUM_THREADS": str(threads)}
    return start(f"client {partition_id} (SuperNode)", argv, log, env)
