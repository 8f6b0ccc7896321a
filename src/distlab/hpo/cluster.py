"""The Ray connection: a local Ray with this machine's cores, or an existing cluster at
HOST:PORT. Ray is an optional extra; without it the search says how to install it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

MISSING = "hyperparameter search needs Ray: pip install 'distlab[tune]'"
# Seconds to wait for a cluster address to answer before saying it is unreachable.
CONNECT_SECONDS = 30.0


def import_ray():
    """Ray, or ValueError with the install line."""
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
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        cpus = num_cpus or os.cpu_count() or 1
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
