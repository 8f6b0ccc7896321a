"""`distlab deploy client`: one SuperNode that trains one client of a deployed run.

Checked before it starts: the partition id, the key (an EC key in OpenSSH format), the CA
certificate, the local port of its ClientAppIo API, and that the server's Fleet API answers
within 30 s. Then it stays in the foreground until the SuperLink lets it go, Ctrl-C or
SIGTERM; it says when it has joined, and a refusal (a key the server did not register, TLS
that does not match) ends it with one line naming the cause.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from distlab.deploy import processes as P
from distlab.deploy.certs import check_ca, check_node_key

REACH_SECONDS = 30.0
# What a SuperNode prints once the SuperLink has accepted it.
JOINED = "SuperNode ID"
# What Flower says when it refuses a node, and what distlab says instead.
REFUSALS = {
    "No SuperNode found with the given public key": (
        "the server refused this node's key: it is not registered there (the server "
        "registers the client-*.pub files of its --certs directory, or those given by --keys)"
    ),
    "CERTIFICATE_VERIFY_FAILED": "the server's TLS certificate is not signed by --ca",
    "private key is provided for authentication": "--key needs TLS (drop --insecure)",
}


@dataclass
class ClientOptions:
    server: str
    partition_id: int
    num_partitions: int
    key: Path | None = None
    ca: Path | None = None
    insecure: bool = False
    data_dir: Path | None = None
    local_data: bool = False
    threads: int = 1
    port: int = P.CLIENTAPPIO_PORT
    join_timeout: float = 60.0
    work: Path = Path(".distlab-client")


def check(options: ClientOptions) -> tuple[str, int]:
    """Everything a client can check alone; (host, port) of the server."""
    if options.num_partitions < 1:
        raise ValueError(f"--num-partitions must be >= 1 (got {options.num_partitions})")
    if not 0 <= options.partition_id < options.num_partitions:
        raise ValueError(
            f"--partition-id {options.partition_id} must be in 0..{options.num_partitions - 1} "
            f"(--num-partitions {options.num_partitions})"
        )
    if options.threads < 1:
        raise ValueError(f"--threads must be >= 1 (got {options.threads})")
    host, port = P.split_address(options.server, "--server")
    if options.insecure:
        if options.key is not None:
            raise ValueError("--key needs TLS: give --ca instead of --insecure")
    else:
        if options.ca is None:
            raise ValueError("--ca CA.pem is needed for TLS (the server's ca.pem), or --insecure")
        check_ca(options.ca)
    if options.key is not None:
        check_node_key(options.key)
    if options.data_dir is not None and not Path(options.data_dir).is_dir():
        raise ValueError(f"--data-dir {options.data_dir}: no such directory")
    if options.local_data and options.data_dir is None:
        raise ValueError("--local-data trains on the files of --data-dir: give --data-dir")
    P.check_port_free(P.LOOPBACK, options.port, "ClientAppIo API (--port)")
    P.wait_reachable(host, port, min(REACH_SECONDS, options.join_timeout), "the server")
    if not options.insecure:
        check_tls(host, port, Path(options.ca))
    return host, port


def check_tls(host: str, port: int, ca: Path) -> None:
    """TLS handshakes with the server as the SuperNode will make them: first the server's
    certificate signed by `ca`, then naming `host` (OpenSSL reports a name mismatch before
    an unknown signer); ValueError in one line when one fails. The SuperNode itself only
    retries a failed handshake until --join-timeout."""
    for check_name in (False, True):
        context = ssl.create_default_context(cafile=str(ca))
        context.check_hostname = check_name
        context.set_alpn_protocols(["h2"])  # gRPC's protocol
        try:
            handshake(context, host, port)
        except ssl.SSLCertVerificationError as exc:
            if check_name:
                raise ValueError(
                    f"the server's TLS certificate does not name {host}: make it with distlab "
                    f"deploy certs --server-names {host},... or connect with a name it lists"
                ) from None
            raise ValueError(
                f"the server at {host}:{port} has a TLS certificate not signed by --ca {ca} "
                f"({exc.verify_message}): give the server's ca.pem"
            ) from None
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"no TLS handshake with the server at {host}:{port} ({exc}): is it a distlab "
                "deploy server started without --insecure?"
            ) from None


def handshake(context: ssl.SSLContext, host: str, port: int) -> None:
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host),
    ):
        pass


def run_client(options: ClientOptions, say=print) -> None:
    """Start the SuperNode and stay with it; ValueError (one line) when it is refused,
    RunInterrupted on Ctrl-C or SIGTERM."""
    from distlab.runtime import launch

    check(options)
    node = P.start_supernode(
        options.work, options.server, options.partition_id, options.num_partitions,
        options.key, None if options.insecure else options.ca, options.port,
        options.data_dir, options.local_data, options.threads,
    )  # fmt: skip
    with launch.sigterm_raises():
        try:
            wait_joined(node, options)
            say(f"client {options.partition_id} joined {options.server}; Ctrl-C to leave")
            while node.alive():
                time.sleep(0.5)
            refused(node, options)
            say(f"client {options.partition_id}: the SuperNode exited ({node.tail(1)})")
        except (KeyboardInterrupt, launch.Terminated) as exc:
            status = launch.stopped_error(exc, options.work)
            raise type(status)(f"client {options.partition_id} left the federation") from None
        finally:
            launch.hold_sigterm()
            node.stop()


def wait_joined(node: P.Managed, options: ClientOptions) -> None:
    deadline = time.monotonic() + options.join_timeout
    while time.monotonic() < deadline:
        if JOINED in log_text(node):
            return
        if not node.alive():
            refused(node, options)
            raise ValueError(f"client {options.partition_id}: the SuperNode exited: {node.tail(1)}")
        time.sleep(0.3)
    refused(node, options)
    raise ValueError(
        f"client {options.partition_id} did not join {options.server} within "
        f"{options.join_timeout:g} s (a TLS mismatch, or the server is not a SuperLink): "
        f"{node.tail(1)}"
    )


def refused(node: P.Managed, options: ClientOptions) -> None:
    """ValueError with distlab's line for a refusal Flower logged, if it logged one."""
    text = log_text(node)
    for said, meaning in REFUSALS.items():
        if said in text:
            raise ValueError(f"client {options.partition_id}: {meaning}")


def log_text(node: P.Managed) -> str:
    try:
        return node.log.read_text(errors="replace")
    except OSError:
        return ""
