"""Warm interpreters for the spawn launcher: a fork server that has imported torch.

A rank in a fresh interpreter imports torch (about a second) only after the command has
imported it, validated the config and loaded the data, so a two-process run started a second
later than a one-process run. Instead, ranks are forked from multiprocessing's fork server,
which imports torch and distlab's worker modules once (`PRELOAD`). The `distlab` command
starts that server first thing when its arguments ask for several local processes
(`prestart`), so the server imports on a second core while the command imports, validates
and loads data; the ranks are forked once everything is checked. The server is no rank and
knows no run: each rank gets its config, working directory and environment from the launcher
when it is forked, and the server exits with the command.
"""

from __future__ import annotations

import multiprocessing.forkserver as forkserver

from distlab.runtime.environ import external_env

# What the server imports before it forks: torch, and the modules a rank imports anyway (the
# CLI too, because a child of `distlab run` re-imports the command's main module).
PRELOAD = ["torch", "torch.distributed", "distlab.cli", "distlab.runtime.launchers.spawn"]


def preload() -> None:
    """Name the server's imports; takes effect when the server starts."""
    forkserver.set_forkserver_preload(PRELOAD)


def prestart(argv: list[str]) -> bool:
    """Start the fork server now when `argv` (the command's arguments) asks for several
    local processes; True when it did. A wrong guess costs one idle process."""
    if not wants_processes(argv):
        return False
    preload()
    forkserver.ensure_running()
    return True


def wants_processes(argv: list[str]) -> bool:
    """`distlab run` with --workers above 1, a config file or `--set workers=...`, outside
    an external launcher (whose ranks are the processes)."""
    if not argv or argv[0] != "run" or external_env() is not None:
        return False
    for flag, value in zip(argv, [*argv[1:], ""], strict=True):
        key, eq, inline = flag.partition("=")
        if key in ("--config", "-c"):
            return True
        if key == "--workers":
            count = inline if eq else value
            return count.isdigit() and int(count) > 1
        if flag == "--set" and value.startswith("workers="):
            count = value.partition("=")[2]
            return count.isdigit() and int(count) > 1
    return False
