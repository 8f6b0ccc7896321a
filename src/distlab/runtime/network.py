"""How this host takes part in a run that spans hosts: the address gloo would bind, the
interface it is told to use, the host names of the ranks, and whether a host still answers.
Imports no torch.

gloo (and NCCL's bootstrap) binds the address this host's name resolves to, unless
GLOO_SOCKET_IFNAME (NCCL_SOCKET_IFNAME) names an interface. Debian and Ubuntu write
`127.0.1.1 HOSTNAME` into /etc/hosts, so on a stock install the name resolves to loopback and
the other hosts are told to connect to 127.0.1.1: the run fails deep inside gloo with
"Connection refused, remote=[127.0.1.1]". `bind_problem` says so before the process group is
made, naming the fixes.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import time
from dataclasses import dataclass

from distlab.runtime.failures import RunFailed

IFNAME_KEYS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")

# A port nothing listens on: a host that answers a connection there with a refusal is up.
PROBE_PORT = 9


def is_loopback(address: str) -> bool:
    """Whether `address` (an IP address) is a loopback address (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def resolve(name: str) -> str | None:
    """The first address `name` resolves to, as gloo would take it, or None."""
    try:
        found = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    return str(found[0][4][0]) if found else None


def interfaces() -> list[str]:
    """The names of this host's network interfaces."""
    try:
        return [name for _, name in socket.if_nameindex()]
    except OSError:
        return []


def spans_hosts(environ: dict[str, str] | None = None) -> bool:
    """Whether the launcher says the job runs on other hosts too: its rendezvous address is
    not loopback (a one-host job meets at 127.0.0.1 or localhost)."""
    env = os.environ if environ is None else environ
    master = env.get("MASTER_ADDR", "")
    if not master:
        return False
    address = master if _is_address(master) else resolve(master)
    return address is not None and not is_loopback(address)


def bind_problem(hostname: str | None = None, environ: dict[str, str] | None = None) -> str:
    """Why gloo would bind an address the other hosts cannot reach, or "" when it would not:
    this host's name resolves to loopback while the job spans hosts, and no interface is
    named (GLOO_SOCKET_IFNAME)."""
    env = os.environ if environ is None else environ
    if env.get("GLOO_SOCKET_IFNAME") or not spans_hosts(env):
        return ""
    name = hostname or socket.gethostname()
    address = resolve(name)
    if address is None or not is_loopback(address):
        return ""
    choices = [i for i in interfaces() if i != "lo"] or ["IFACE"]
    return (
        f"host name {name!r} resolves to the loopback address {address}, so gloo would bind "
        f"{address} and the other hosts could not reach this one: set "
        f"GLOO_SOCKET_IFNAME={choices[0]} or --set network.interface={choices[0]} "
        f"(interfaces here: {', '.join(interfaces()) or 'none found'}), or make {name!r} "
        "resolve to the link address in /etc/hosts (Debian and Ubuntu write 127.0.1.1)"
    )


def check_interface(interface: str | None) -> None:
    """ValueError naming this host's interfaces when `interface` is set and not one of them:
    a run on this host alone is refused the same way as one that spans hosts."""
    here = interfaces()
    if interface is not None and interface not in here:
        raise ValueError(
            f"network.interface {interface!r} is not an interface of host "
            f"{socket.gethostname()!r} (interfaces here: {', '.join(here) or 'none found'})"
        )


def use_interface(interface: str | None) -> None:
    """Make gloo and NCCL bind `interface` (network.interface) by exporting
    GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME before the process group is made; ValueError
    naming this host's interfaces when it has none of that name. Nothing for None."""
    if interface is None:
        return
    check_interface(interface)
    for key in IFNAME_KEYS:
        os.environ[key] = interface


def answers(address: str, timeout: float = 1.0) -> bool:
    """Whether the host at `address` answers at all: a refused connection counts as an
    answer; a timeout or "unreachable" does not."""
    try:
        with socket.create_connection((address, PROBE_PORT), timeout=timeout):
            return True
    except ConnectionRefusedError:
        return True
    except OSError as exc:
        return exc.errno not in (None, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT)


def own_address(environ: dict[str, str] | None = None) -> str:
    """The address the other hosts reach this one at: the named interface's, else the one
    this host's name resolves to ("" when unknown)."""
    env = os.environ if environ is None else environ
    iface = env.get("GLOO_SOCKET_IFNAME")
    if iface:
        return interface_address(iface) or ""
    return resolve(socket.gethostname()) or ""


def interface_address(interface: str) -> str | None:
    """The IPv4 address of `interface`, or None."""
    import fcntl
    import struct

    siocgifaddr = 0x8915  # <linux/sockios.h>
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(
                sock.fileno(), siocgifaddr, struct.pack("256s", interface[:15].encode())
            )
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


@dataclass(frozen=True)
class Node:
    """Where one rank runs: its host's name and the address other hosts reach it at."""

    host: str
    address: str


def meet(store, rank: int, world: int, timeout: float, problem: str) -> list[Node]:
    """Every rank's Node, gathered through the launcher's `store` before the process group is
    made. A rank with a `problem` (its host cannot take part) posts it and fails at once;
    the others hear of it here instead of waiting for gloo's timeout. RunFailed names the
    rank and its host, or the ranks that did not come within `timeout` seconds."""
    me = {"host": socket.gethostname(), "address": own_address(), "problem": problem}
    store.set(f"node/{rank}", json.dumps(me))
    if problem:
        raise RunFailed(f"rank {rank} on {me['host']} cannot join: {problem}")
    nodes: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    while len(nodes) < world:
        for other in range(world):
            key = f"node/{other}"
            if other not in nodes and store.check([key]):
                nodes[other] = json.loads(store.get(key))
                if nodes[other]["problem"]:
                    host, said = nodes[other]["host"], nodes[other]["problem"]
                    raise RunFailed(f"rank {other} on {host} cannot join: {said}")
        if len(nodes) < world and time.monotonic() > deadline:
            missing = ", ".join(str(r) for r in range(world) if r not in nodes)
            raise RunFailed(f"rank(s) {missing} did not come within {timeout:g} s")
        time.sleep(0.02)
    return [Node(nodes[r]["host"], nodes[r]["address"]) for r in range(world)]


def read_nodes(store, world: int) -> list[Node] | None:
    """The Nodes `meet` gathered, read back from `store`; None when they cannot be read."""
    try:
        found = [json.loads(store.get(f"node/{r}")) for r in range(world)]
    except (RuntimeError, ValueError):
        return None
    return [Node(n["host"], n["address"]) for n in found]


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
