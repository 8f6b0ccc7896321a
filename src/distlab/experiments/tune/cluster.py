"""The Ray connection: a local Ray with this machine's cores, or an existing cluster at
HOST:PORT. Ray is an optional extra; without it the search says how to install it."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MISSING = "hyperparameter search needs Ray: pip install 'distlab[tune]'"
# Seconds to wait for a cluster address to answer before saying it is unreachable.
CONNECT_SECONDS = 30.0
# Ray's own INFO lines (instance started, result files written) drown the command's output.
QUIET = logging.WARNING


def import_ray():
    """Ray, or ValueError with the install line."""
    use_token_if_present()  # before Ray's first import: it reads the mode once
    try:
        import ray
        from ray import tune  # noqa: F401 - the search needs both
    except ImportError:
        raise ValueError(MISSING) from None
    return ray


def check_address(address: str, timeout: float = CONNECT_SECONDS) -> tuple[str, int]:
    """HOST:PORT that accepts a TCP connection within `timeout`; ValueError otherwise (a
    wrong address is said at once, not after Ray's own long retries)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--address must be HOST:PORT (got {address!r})")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ValueError(
            f"--address {address}: no Ray head answers there ({exc.strerror or exc}); start one "
            "with `ray start --head --port PORT`"
        ) from None
    return host, int(port)


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[object]:
    """Ray for the length of a search: joined at `address`, or started locally with
    `num_cpus` (default: this machine's cores), without the dashboard; shut down after."""
    ray = import_ray()
    if address is not None:
        check_address(address)
        join_cluster(ray, address)
    else:
        cpus = num_cpus or os.cpu_count() or 1
        # address="local": a new Ray of our own, even where `ray start` left a cluster running
        # on this machine (ray.init() alone would join that one, and refuse num_cpus).
        ray.init(
            address="local",
            num_cpus=cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=QUIET,
        )
    try:
        yield ray
    finally:
        ray.shutdown()


def join_cluster(ray, address: str) -> None:
    """ray.init at `address`; a refusal (a wrong token, another Ray version) is one line."""
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=QUIET)
    except (ConnectionError, RuntimeError) as exc:
        cause = " ".join(str(exc).split())[:300]
        raise ValueError(f"--address {address}: Ray refused the connection: {cause}") from None


def use_token_if_present() -> None:
    """Send this machine's Ray token when it has one, as `ray start` does: recent Ray heads
    enable token authentication whenever ~/.ray/auth_token exists (and a local ray.init
    always does), but a driver joining a head sends no token unless RAY_AUTH_MODE=token. An
    explicit RAY_AUTH_MODE is left alone; Ray reads it when first imported."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(path):
        os.environ["RAY_AUTH_MODE"] = "token"


@contextmanager
def local_cluster(nodes: int, cpus_per_node: int = 1) -> Iterator[object]:
    """Ray's own multi-node test cluster on this machine (`ray.cluster_utils.Cluster`): a head
    and nodes - 1 more raylets of `cpus_per_node` CPUs each, joined for the block, then shut
    down. It stands in for `nodes` machines of a real cluster when there is one machine."""
    ray = import_ray()
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": cpus_per_node, "include_dashboard": False},
    )
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus_per_node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level=QUIET)
        try:
            yield ray
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()


# --- runs on a cluster's nodes -----------------------------------------------------------------


def node_label(ip: str, host: str | None) -> str:
    """How a line names a node: `10.77.0.2 (hostb)`."""
    return f"{ip} ({host})" if host and host != ip else ip


def this_node() -> dict[str, str]:
    """The node this process runs on: its Ray address and its host name."""
    import ray

    return {"node": ray.util.get_node_ip_address(), "host": socket.gethostname()}


def alive_nodes(ray) -> dict[str, dict[str, str]]:
    """Node id -> {node, host} of each live node of the cluster."""
    return {
        n["NodeID"]: {"node": n["NodeManagerAddress"], "host": n.get("NodeManagerHostname", "")}
        for n in ray.nodes()
        if n.get("Alive")
    }


def largest_node(ray) -> int:
    """The CPUs of the cluster's largest live node."""
    cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return int(max(cpus, default=0))


def lost_nodes(before: dict[str, dict[str, str]], ray) -> list[dict[str, str]]:
    """The nodes alive in `before` that the cluster no longer has."""
    now = alive_nodes(ray)
    return [node for nid, node in before.items() if nid not in now]


def sees_file(path: str) -> bool:
    return os.path.exists(path)


def check_shared(ray, out: Path) -> None:
    """Every live node sees `out` (a file the driver writes there): the runs of a search or
    sweep on a cluster write their run directories into it, and the driver reads them back.
    ValueError naming a node that does not see it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    marker = out / f".distlab-shared-{uuid.uuid4().hex}"
    marker.write_text("")
    try:
        probe = ray.remote(num_cpus=0, max_retries=0)(sees_file)
        nodes = alive_nodes(ray)
        refs = [
            probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False)
            ).remote(str(marker.resolve()))
            for nid in nodes
        ]
        seen = ray.get(refs, timeout=CONNECT_SECONDS)
    finally:
        marker.unlink(missing_ok=True)
    for node, ok in zip(nodes.values(), seen, strict=True):
        if not ok:
            if made:
                out.rmdir()
            raise ValueError(
                f"{out} is not shared with node {node_label(node['node'], node['host'])}: on a "
                "Ray cluster every node writes its runs there; give a directory that every node "
                "mounts at the same path (NFS)"
            )
