"""Which launcher runs a job, and the names a caller of the runtime catches.

Launchers, one module each under runtime/launchers/:
- inline: one process, inside the caller's interpreter (a real gloo group of size 1);
- spawn: N local processes, watched until the first one fails;
- external: the processes torchrun, mpirun or Slurm started, joined from the environment.

Each runs a `Job` (entry point, roles, lead rank) and names the rank that failed; none of
them knows which strategy it runs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from distlab.runtime.failures import (
    MainNotGuarded,
    RunFailed,
    RunInterrupted,
    RunTerminated,
    Terminated,
    refuse_worker_import,
    stopped_error,
)
from distlab.runtime.launchers.external import external_env, is_follower, join_external
from distlab.runtime.launchers.inline import run_inline
from distlab.runtime.launchers.shared import launch_shared
from distlab.runtime.launchers.spawn import announce_training, check_entry_importable, launch_local
from distlab.runtime.signals import hold_sigterm, sigterm_raises
from distlab.runtime.worker import Job, RankSetup, notify, resolve_device, thread_count

if TYPE_CHECKING:
    from distlab.config import RunConfig

__all__ = [
    "LOCAL_LAUNCHERS",
    "Job",
    "MainNotGuarded",
    "OversubscribeWarning",
    "RankSetup",
    "RunFailed",
    "RunInterrupted",
    "RunTerminated",
    "Terminated",
    "announce_training",
    "check_process_count",
    "external_env",
    "hold_sigterm",
    "is_follower",
    "join_external",
    "launch_local",
    "local_launcher",
    "notify",
    "refuse_worker_import",
    "resolve_device",
    "run_inline",
    "sigterm_raises",
    "stopped_error",
    "thread_count",
    "warn_oversubscribed",
]

# Launchers that start a run's processes on this machine: (cfg, job, run_dir, start, data,
# on_event, follow) -> None, raising RunFailed, RunInterrupted or RunTerminated. `follow` is
# the caller's: called while processes run, it passes the lead rank's new events on.
LOCAL_LAUNCHERS: dict[str, Callable] = {
    "inline": run_inline,
    "spawn": launch_local,
    "shared": launch_shared,
}


def check_launcher(name: str) -> None:
    """A run whose clients are other programs is started by `distlab deploy`."""
    if name == "deployed":
        raise ValueError(
            "executor flower runs on Flower's deployment engine: start it with "
            "distlab deploy local or distlab deploy server"
        )


def local_launcher(name: str, job: Job) -> Callable:
    """The launcher a strategy asked for; "auto" runs one process inline, more by spawn.
    ValueError for an unknown name, or for an entry that processes it starts cannot import."""
    if name == "auto":
        name = "inline" if job.world == 1 else "spawn"
    if name not in LOCAL_LAUNCHERS:
        allowed = ", ".join(["auto", *LOCAL_LAUNCHERS])
        raise ValueError(f"unknown launcher {name!r} (allowed: {allowed})")
    if name != "inline":
        check_entry_importable(job.entry)
    return LOCAL_LAUNCHERS[name]


# More local processes than this many per core is almost surely a typo (--workers 5000).
OVERSUBSCRIBE_FACTOR = 4


def check_process_count(cfg: RunConfig, world: int) -> None:
    """Refuse far more local processes than cores unless asked for."""
    cores = os.cpu_count() or 1
    if world > OVERSUBSCRIBE_FACTOR * cores and not cfg.oversubscribe:
        raise ValueError(
            f"{world} processes on {cores} cores is more than {OVERSUBSCRIBE_FACTOR} per core; "
            "lower --workers, or --set oversubscribe=true to run them anyway"
        )


def warn_oversubscribed(world: int, stacklevel: int = 2) -> None:
    """More processes than cores: said once every check has passed, so bad input still gets
    its one line alone. `stacklevel` as warnings.warn's, from the caller's frame."""
    cores = os.cpu_count() or 1
    if world > cores:
        warnings.warn(
            f"{world} processes share {cores} cores: timings will not show the speedup "
            "of separate cores",
            OversubscribeWarning,
            stacklevel=stacklevel + 1,
        )


class OversubscribeWarning(UserWarning):
    """More processes than cores: the run works, its timings mislead."""
