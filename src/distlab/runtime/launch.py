"""Which launcher runs a job, and the names a caller of the runtime catches.

Launchers, one module each under runtime/launchers/:
- inline: one process, inside the caller's interpreter (a real gloo group of size 1);
- spawn: N local processes, watched until the first one fails;
- external: the processes torchrun, mpirun or Slurm started, joined from the environment.

Each runs a `Job` (entry point, roles, lead rank) and names the rank that failed; none of
them knows which strategy it runs.
"""

from __future__ import annotations

from collections.abc import Callable

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
from distlab.runtime.launchers.spawn import check_entry_importable, launch_local
from distlab.runtime.signals import hold_sigterm, sigterm_raises
from distlab.runtime.worker import Job, notify, resolve_device, thread_count

__all__ = [
    "LOCAL_LAUNCHERS",
    "Job",
    "MainNotGuarded",
    "RunFailed",
    "RunInterrupted",
    "RunTerminated",
    "Terminated",
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
]

# Launchers that start a run's processes on this machine: (cfg, job, run_dir, start, data,
# on_event) -> None, raising RunFailed, RunInterrupted or RunTerminated.
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
