"""A multi-host test bed on one machine: each simulated host is a Linux network namespace
(its own interfaces, addresses and ports) entered with a UTS namespace of its own (its own
host name), with its own /etc/hosts (`ip netns exec` binds /etc/netns/NS/hosts over it). The
hosts hang off one bridge in the root namespace, which has no address: only the addresses
inside the namespaces (10.77.0.1, 10.77.0.2, ...) are used. A host's link can be shaped with
`tc tbf` (bandwidth; this kernel has no netem, so no added latency) or cut.

Every simulated host shares this machine's cores with the others, and spinning compute
threads starve a virtual link, so each host runs its processes with one thread
(`Host.torchrun` adds `--set threads=1`, `Host.env` sets OMP_NUM_THREADS=1).

Needs root and iproute2 (`ip`, `tc`) and util-linux (`unshare`); `missing()` names what is
not there, and the `hosts` fixture skips with that reason. Everything is removed when the
bed closes, a failed test included: processes left in a namespace are killed first and
reported by `Host.pids()` before that, so a test can assert there are none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.77.0"
NETNS_ETC = Path("/etc/netns")
TOOLS = {"ip": "iproute2", "tc": "iproute2", "unshare": "util-linux"}
# The path where each host sees a directory of its own (Host.home): hosts share no files there,
# as machines of a cluster without a shared file system.
HOST_DIR = Path("/mnt/distlab-host")
# Takes the host's name (UTS namespace) and mounts its own directory at HOST_DIR (mount
# namespace), then becomes the command.
AS_HOST = 'hostname "$0" && mount --bind "$1" "$2" && shift 2 && exec "$@"'


def missing() -> str | None:
    """Why the bed cannot be built here, or None."""
    if os.geteuid() != 0:
        return "the multi-host test bed needs root (network namespaces)"
    absent = [
        f"{tool} (Debian package {pkg})" for tool, pkg in TOOLS.items() if not shutil.which(tool)
    ]
    if absent:
        return "the multi-host test bed needs " + ", ".join(absent)
    probe = f"dlprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class Host:
    """One simulated host: its host name, namespace, address and interface."""

    name: str
    ns: str
    addr: str
    veth: str  # the root-namespace end of its link, where egress towards it is shaped
    home: Path  # what this host sees at HOST_DIR
    iface: str = "eth0"
    env: dict[str, str] = field(default_factory=dict)

    def command(self, argv: list[str]) -> list[str]:
        """`argv` as a command that runs on this host."""
        return ["ip", "netns", "exec", self.ns, "unshare", "--uts", "--mount", "--",
                "sh", "-c", AS_HOST, self.name, str(self.home), str(HOST_DIR), *argv]  # fmt: skip

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, "OMP_NUM_THREADS": "1", **self.env, **(extra or {})}

    def popen(self, argv: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
        """Start `argv` on this host in a session of its own (so it can be signalled as a
        group); stdout and stderr are captured as text unless given."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(
            self.command(argv), env=self.environ(env), text=True, start_new_session=True, **kw
        )

    def run(self, argv: list[str], timeout: float = 180, env=None, **kw):
        """Run `argv` on this host to its end; the CompletedProcess."""
        return subprocess.run(
            self.command(argv), env=self.environ(env), capture_output=True, text=True,
            timeout=timeout, **kw,
        )  # fmt: skip

    def torchrun(self, nnodes: int, node_rank: int, nproc: int, master: str, *args: str,
                 port: int = 29500, launcher: tuple[str, ...] = ()) -> list[str]:  # fmt: skip
        """The argv of `torchrun ... -m distlab run ARGS --set threads=1` for this host."""
        return [
            sys.executable, "-m", "torch.distributed.run", *launcher,
            "--nnodes", str(nnodes), "--node-rank", str(node_rank),
            "--nproc-per-node", str(nproc), "--master-addr", master, "--master-port", str(port),
            "-m", "distlab", "run", *args, "--set", "threads=1",
        ]  # fmt: skip

    def pids(self) -> list[int]:
        """The processes running on this host now."""
        out = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def kill_all(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def link(self, up: bool) -> None:
        """Cut (up=False) or restore this host's link."""
        sh("ip", "-n", self.ns, "link", "set", self.iface, "up" if up else "down")

    def shape(self, rate: str | None) -> None:
        """Limit this host's link to `rate` (tc syntax: 100mbit, 1gbit) both ways with a
        token bucket; None removes the limit."""
        for dev, netns in ((self.iface, ["-n", self.ns]), (self.veth, [])):
            subprocess.run(["tc", *netns, "qdisc", "del", "dev", dev, "root"], capture_output=True)
            if rate is not None:
                sh("tc", *netns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                   "burst", burst(rate), "latency", "100ms")  # fmt: skip


def burst(rate: str) -> str:
    """A bucket big enough for the rate at a 250 Hz kernel timer (rate / 250, at least 32 KB)."""
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    for unit, scale in units.items():
        if rate.endswith(unit):
            return f"{max(32_000, int(float(rate[: -len(unit)]) * scale / 8 / 250))}b"
    return "32kb"


def sh(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


class HostBed:
    """N hosts on one bridge. `loopback_name=True` writes Debian's default line
    `127.0.1.1 NAME` into each host's /etc/hosts instead of its link address: the host name
    then resolves to loopback, the most common cluster misconfiguration."""

    def __init__(self, count: int, loopback_name: bool = False) -> None:
        tag = f"{os.getpid() % 100000}{int(time.monotonic() * 1000) % 100}"
        self.bridge = f"dlbr{tag}"[:15]
        self.root = Path(tempfile.mkdtemp(prefix="distlab-hosts-"))
        self.hosts = [
            Host(
                name=f"host{chr(ord('a') + i)}",
                ns=f"dl{tag}{chr(ord('a') + i)}",
                addr=f"{SUBNET}.{i + 1}",
                veth=f"dl{tag}{chr(ord('a') + i)}"[:15],
                home=self.root / f"host{chr(ord('a') + i)}",
            )
            for i in range(count)
        ]
        self.loopback_name = loopback_name

    def __enter__(self) -> HostBed:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _build(self) -> None:
        HOST_DIR.mkdir(parents=True, exist_ok=True)
        for host in self.hosts:
            host.home.mkdir()
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "link", "set", self.bridge, "up")
        for host in self.hosts:
            self._add(host)

    def _add(self, host: Host) -> None:
        sh("ip", "netns", "add", host.ns)
        sh("ip", "link", "add", host.veth, "type", "veth", "peer", "name", host.veth + "p")
        sh("ip", "link", "set", host.veth + "p", "netns", host.ns)
        sh("ip", "-n", host.ns, "link", "set", host.veth + "p", "name", host.iface)
        sh("ip", "link", "set", host.veth, "master", self.bridge, "up")
        sh("ip", "-n", host.ns, "addr", "add", f"{host.addr}/24", "dev", host.iface)
        sh("ip", "-n", host.ns, "link", "set", host.iface, "up")
        sh("ip", "-n", host.ns, "link", "set", "lo", "up")
        etc = NETNS_ETC / host.ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(self.hosts_file(host))

    def hosts_file(self, me: Host) -> str:
        lines = ["127.0.0.1 localhost"]
        for host in self.hosts:
            if host is me and self.loopback_name:
                lines.append(f"127.0.1.1 {host.name}")
            else:
                lines.append(f"{host.addr} {host.name}")
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        for host in self.hosts:
            host.kill_all()
            subprocess.run(["ip", "netns", "del", host.ns], capture_output=True)
            subprocess.run(["ip", "link", "del", host.veth], capture_output=True)
            shutil.rmtree(NETNS_ETC / host.ns, ignore_errors=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def host_bed(count: int = 2, loopback_name: bool = False) -> Iterator[list[Host]]:
    """`count` hosts for the length of the block; removed after, whatever happens."""
    with HostBed(count, loopback_name) as bed:
        yield bed.hosts


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int | None, str, str]]:
    """(returncode, stdout, stderr) of each process once all have ended or `timeout` passed;
    a process still running then is killed with its group and reported with returncode
    None."""
    deadline = time.monotonic() + timeout
    out = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            out.append((proc.returncode, stdout, stderr))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            out.append((None, stdout, stderr))
    return out


def distlab_torchrun(
    nnodes: int, node_rank: int, nproc: int, master: str, *args: str, port: int = 29500
) -> list[str]:
    """The argv of `torchrun ... -m distlab ARGS` for any distlab command (probe-network,
    run), each process with one thread."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", str(nnodes), "--node-rank", str(node_rank),
        "--nproc-per-node", str(nproc), "--master-addr", master, "--master-port", str(port),
        "-m", "distlab", *args, "--set", "threads=1",
    ]  # fmt: skip
