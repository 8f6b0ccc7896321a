"""`distlab probe-network`: measure the link between a job's ranks and write the alpha-beta
fit that `distlab report --network FILE` prices the what-if with."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import typer

from distlab.cli.flags import SET

commands = typer.Typer()


@commands.command("probe-network")
def probe_network(
    out: Path = typer.Option(Path("link.json"), "--out", "-o", help="The link file to write."),
    workers: int = typer.Option(
        0, help="Start this many local processes (0: this process is one of a launcher's)."
    ),
    max_bytes: int = typer.Option(16 * 2**20, help="Largest message, in bytes (sizes 4, 16, ...)."),
    repeats: int = typer.Option(5, help="Timed calls per size; the median counts."),
    max_seconds: float = typer.Option(
        0.25, help="Measure no size that would take longer than this (seconds per call)."
    ),
    link_rate: str = typer.Option(
        None, help="The link's nominal rate (e.g. 100mbit), for the wire-over-payload factor."
    ),
    set_: list[str] = SET,
) -> None:
    """Measure point-to-point (ping-pong) and allreduce time against message size between
    the ranks, over the communicator the strategies use (--set intra_node=gloo: the process
    group alone), fit alpha and beta, and write them to --out (rank 0).

    Examples:

      torchrun --nnodes 2 --nproc-per-node 1 --node-rank R --master-addr HOST0 \\
        -m distlab probe-network --out link.json

      distlab probe-network --workers 2 --out local.json

      distlab report runs/allreduce --network 1gbit,link.json
    """
    from distlab.config import build_config
    from distlab.experiments.whatif import parse_bandwidth
    from distlab.runtime.environ import external_env
    from distlab.runtime.launch import is_follower
    from distlab.runtime.probe import ProbeOptions, check_options, check_out

    try:
        rate = parse_bandwidth(link_rate) if link_rate else None
    except ValueError as exc:
        raise ValueError(str(exc).replace("--network", "--link-rate")) from None
    options = ProbeOptions(max_bytes, repeats, max_seconds, rate)
    check_options(options)
    # only rank 0 writes: the other hosts need not have its directory
    out = out if is_follower() else check_out(out)
    cfg = build_config(None, {}, set_ or [])
    if workers and external_env() is not None:
        raise ValueError("--workers starts local processes: leave it out under a launcher")
    if workers:
        if workers < 2:
            raise ValueError(f"--workers must be >= 2 (got {workers})")
        start_local(workers, sys.argv[1:], cfg.timeout)
        return
    measure_here(cfg, options, out)


def measure_here(cfg, options, out: Path) -> None:
    """This process's part; rank 0 prints the table and the fit."""
    from distlab.runtime.probe import probe

    measured = probe(cfg, options)
    if measured is not None:
        link = describe(measured, options.link_rate)
        out.write_text(json.dumps(link, indent=2) + "\n")
        print_link(link, out)


def describe(measured: dict, link_rate: float | None) -> dict:
    """The link file: what was measured, where, and the fit."""
    from distlab.experiments.whatif_link import LINK_FORMAT, fit_link
    from distlab.runtime.failures import RunFailed

    sizes, p2p, summed = (measured[k] for k in ("sizes_bytes", "p2p_seconds", "allreduce_seconds"))
    try:
        fit = fit_link(sizes, p2p, summed, measured["world"])
    except ValueError as exc:
        raise RunFailed(f"probe-network: {exc}") from None
    link = {"format": LINK_FORMAT, **measured, **fit}
    if link_rate:
        # A nominal rate of R bytes/s carries 1/beta payload bytes/s: R*beta wire bytes each.
        link["link_rate_bytes_per_second"] = link_rate
        link["wire_per_payload"] = round(link_rate * fit["beta_seconds_per_byte"], 4)
    return link


def print_link(link: dict, out: Path) -> None:
    print(f"{'bytes':>10}  {'one-way ms':>11}  {'allreduce ms':>12}")
    for size, p2p, total in zip(
        link["sizes_bytes"], link["p2p_seconds"], link["allreduce_seconds"], strict=True
    ):
        print(f"{size:>10}  {p2p * 1e3:>11.4f}  {total * 1e3:>12.4f}")
    line = (
        f"alpha {link['alpha_seconds'] * 1e6:.1f} us, "
        f"{link['bandwidth_bytes_per_second'] * 8 / 1e6:.1f} Mbit/s payload, "
        f"allreduce overhead x{link['overhead']:.3f}"
    )
    if "wire_per_payload" in link:
        line += f", wire/payload {link['wire_per_payload']:.3f}"
    print(f"{line} ({link['communicator']}, {link['world']} ranks) -> {out}")


def start_local(workers: int, argv: list[str], timeout: float) -> None:
    """Run this command in `workers` local processes, as torchrun would start them; the
    first failure stops the others, and its exit code is this command's."""
    port = free_port()
    args = strip_workers(argv)
    procs = []
    for rank in range(workers):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(workers), LOCAL_RANK=str(rank))
        env |= {"LOCAL_WORLD_SIZE": str(workers), "MASTER_ADDR": "127.0.0.1"}
        env |= {"MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "distlab", *args], env=env))
    code = wait_first_failure(procs, 2 * timeout + 600)
    if code:
        raise typer.Exit(code)


def strip_workers(argv: list[str]) -> list[str]:
    """`argv` without --workers N (or --workers=N)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


def wait_first_failure(procs: list[subprocess.Popen], limit: float) -> int:
    """0 when every process exits 0; else the first failure's code, the rest stopped (all
    of them after `limit` seconds)."""
    deadline = time.monotonic() + limit
    while any(p.poll() is None for p in procs):
        failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
        if failed or time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                p.wait()
            if not failed:
                print(f"error: probe-network stopped after {limit:.0f} s", file=sys.stderr)
            return failed[0] if failed else 1
        time.sleep(0.05)
    return next((p.returncode for p in procs if p.returncode), 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
