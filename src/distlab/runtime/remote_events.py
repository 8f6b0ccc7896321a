"""Ranks that do not see the run directory: machines of a cluster without a shared file system.

Rank 0 prepares the run directory on its own machine. Whether another rank sees that same
directory is not a question of its path (another machine may hold a directory of that name,
an earlier run's): rank 0 writes a marker holding a random nonce into the directory, sends
the nonce to every rank, and each rank looks for the marker with that nonce. Every rank then
learns who sees it (one all-gather), so all take the same decisions.

A rank that does not see the directory never creates it there. It writes what a rank writes
(its event file, its error report, a lead's model.pt) in a private scratch directory of the
same name on its own machine, removed when the rank ends. Once training is done, each such
rank sends rank 0 its event file (and the lead its model.pt) over the process group, as
uint8 tensors (never pickle), and rank 0 writes them into the run directory before it
merges the events. Its error report, should it fail, reaches rank 0 through the launcher's
store, as every rank's does.

What a run without a shared file system does not keep: the event file of a remote rank that
failed (the store carries its one-line cause), and checkpoints, which every rank must find at
a resume: `checkpoint.every > 0`, and a resumed run, are refused with one line when some
rank does not see the run directory.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from distlab.runtime.signals import hold_sigterm

if TYPE_CHECKING:
    from distlab.config import RunConfig
    from distlab.runs.directory import RunPaths

NONCE_BYTES = 16


@dataclass
class RunView:
    """Which ranks see the lead's run directory, and this rank's paths: the run's own, or
    a private scratch directory's where it does not see them."""

    rank: int
    lead: int
    sees: list[bool]
    paths: RunPaths | None
    """Where this rank writes its records."""
    device: torch.device
    scratch: Path | None = None
    """The private directory of a rank that does not see the run directory."""
    run_paths: RunPaths | None = None
    """The run directory as rank 0 sees it."""

    @property
    def remote(self) -> list[int]:
        """The ranks that do not see the run directory."""
        return [r for r, seen in enumerate(self.sees) if not seen]

    def deliver(self) -> None:
        """Collective, once training is done: each remote rank sends rank 0 its event file
        (the lead also its model.pt) and rank 0 writes them into the run directory."""
        for rank in self.remote:
            if self.rank == rank:
                _send_files(self._own_files(), self.device)
            elif self.rank == 0:
                events, model = _recv_files(rank, self.device)
                self._keep(rank, events, model)

    def _own_files(self) -> list[bytes]:
        assert self.paths is not None
        events = _read_or_empty(self.paths.rank_events(self.rank))
        model = _read_or_empty(self.paths.model) if self.rank == self.lead else b""
        return [events, model]

    def _keep(self, rank: int, events: bytes, model: bytes) -> None:
        assert self.run_paths is not None
        self.run_paths.rank_events(rank).write_bytes(events)
        if model:
            self.run_paths.model.write_bytes(model)

    def close(self) -> None:
        """Remove this rank's scratch directory, if it has one."""
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def agree_view(
    cfg: RunConfig, paths: RunPaths | None, rank: int, world: int, lead: int, device: torch.device
) -> RunView:
    """Collective: find out which ranks see the run directory rank 0 prepared at `paths`,
    and give a rank that does not a scratch directory of its own. ValueError on every rank
    (and the fresh directory removed) when the run needs a directory all ranks share."""
    if paths is None:
        return RunView(rank, lead, [True] * world, None, device)
    nonce = _broadcast_nonce(paths, rank, device)
    seen = rank == 0 or _marker(paths) == nonce
    resuming = rank == 0 and (paths.resume.is_file() or paths.checkpoints.is_dir())
    flags = _all_gather_flags([seen, resuming], world, device)
    if rank == 0:
        paths.marker.unlink(missing_ok=True)
    sees = [bool(f[0]) for f in flags]
    if not all(sees):
        _refuse_unshared(cfg, paths, rank, sees, bool(flags[0][1]))
    if seen:
        return RunView(rank, lead, sees, paths, device, run_paths=paths)
    scratch = Path(tempfile.mkdtemp(prefix=f"distlab-rank{rank}-"))
    own = type(paths)(scratch / paths.root.name)
    own.events_dir.mkdir(parents=True)
    return RunView(rank, lead, sees, own, device, scratch, paths)


def _refuse_unshared(
    cfg: RunConfig, paths: RunPaths, rank: int, sees: list[bool], resuming: bool
) -> None:
    """Checkpoints need a directory every rank shares: refuse them, on every rank alike."""
    if cfg.checkpoint.every <= 0 and not resuming:
        return
    hold_sigterm()  # the others exit on this too; their launcher's SIGTERM must wait
    if rank == 0 and not resuming:
        shutil.rmtree(paths.root, ignore_errors=True)  # this run's, made a moment ago
    remote = ", ".join(str(r) for r, seen in enumerate(sees) if not seen)
    what = "resuming" if resuming else f"checkpoint.every={cfg.checkpoint.every}"
    raise ValueError(
        f"{what} needs a run directory every rank sees, but rank(s) {remote} do not see "
        f"{str(paths.root)!r} (no shared file system); use checkpoint.every=0 or an "
        "--out-dir on a shared file system"
    )


def _marker(paths: RunPaths) -> bytes | None:
    try:
        return paths.marker.read_bytes()
    except OSError:
        return None


def _broadcast_nonce(paths: RunPaths, rank: int, device: torch.device) -> bytes:
    """Rank 0 writes a fresh nonce into the run directory's marker and sends it to all."""
    body = torch.zeros(NONCE_BYTES, dtype=torch.uint8, device=device)
    if rank == 0:
        nonce = secrets.token_bytes(NONCE_BYTES)
        paths.marker.write_bytes(nonce)
        body = torch.tensor(list(nonce), dtype=torch.uint8, device=device)
    dist.broadcast(body, src=0)
    return bytes(body.cpu().tolist())


def _all_gather_flags(flags: list[bool], world: int, device: torch.device) -> list[list[int]]:
    mine = torch.tensor([int(f) for f in flags], dtype=torch.int64, device=device)
    every = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    return [t.cpu().tolist() for t in every]


def _read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _send_files(files: list[bytes], device: torch.device) -> None:
    """Send `files` to rank 0: their sizes, then each non-empty one as uint8."""
    sizes = torch.tensor([len(f) for f in files], dtype=torch.int64, device=device)
    dist.send(sizes, dst=0)
    for data in files:
        if data:
            dist.send(torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device), dst=0)


def _recv_files(src: int, device: torch.device) -> list[bytes]:
    """What `_send_files` on rank `src` sent."""
    sizes = torch.zeros(2, dtype=torch.int64, device=device)
    dist.recv(sizes, src=src)
    files = []
    for size in sizes.cpu().tolist():
        body = torch.empty(int(size), dtype=torch.uint8, device=device)
        if size:
            dist.recv(body, src=src)
        files.append(body.cpu().numpy().tobytes())
    return files
