"""Checkpoints: a rank's whole training state at a step or round, written atomically and read
back with torch.load(weights_only=True).

The run's checkpoints folder (RunPaths.checkpoints) holds one <unit>-<NNNNNNNN>/ folder per
checkpoint, which holds, per rank, rank-R.pt (the state: models, optimizers, random
generators, the position in the schedule, the recorder's place in its event file, the
communicator's counters, what the algorithm keeps besides) and rank-R.json (its size and
SHA-256). Each is written to a temporary file, fsynced and renamed, the JSON
last, so a checkpoint is complete once every rank's JSON exists and its .pt matches it; an
incomplete or damaged one is never loaded. A rank keeps its two newest checkpoints, so the
previous one stays until the new one is complete.

A resumed run (distlab run --resume, or a torchrun restart) finds a resume record
(RunPaths.resume) naming the checkpoint to start from; each rank cuts its event file back to
where that checkpoint was taken, so the events continue without duplicates.

Only tensors and plain data (dicts, lists, numbers, strings) go in: the files cross process
and machine boundaries, so they are never pickled objects.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distlab.data.files import sha256_file

if TYPE_CHECKING:
    from distlab.runs.directory import RunPaths

KEEP = 2


@dataclass
class Checkpoint:
    """One complete checkpoint on disk."""

    folder: Path
    at: int
    unit: str

    @property
    def label(self) -> str:
        return f"{self.unit} {self.at}"

    def rank_file(self, rank: int) -> Path:
        return self.folder / f"rank-{rank}.pt"

    def record_file(self, rank: int) -> Path:
        """The rank file's size, SHA-256, clock and versions, written after it."""
        return self.folder / f"rank-{rank}.json"

    def seconds(self, rank: int) -> float:
        """The rank's event clock when the checkpoint was taken."""
        return float(read_sidecar(self.record_file(rank)).get("seconds", 0.0))


def folder_name(unit: str, at: int) -> str:
    return f"{unit}-{at:08d}"


def atomic_write(path: Path, write) -> None:
    """write(file) into a temporary file beside `path`, fsync, rename, fsync the folder: a
    reader sees the old file or the whole new one, even after a crash."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_json(path: Path, record: dict[str, Any]) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(record).encode()))


def read_sidecar(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def damage(checkpoint: Checkpoint, world: int) -> str | None:
    """Why `checkpoint` cannot be loaded (a rank's file missing, cut short or altered), or
    None when every rank's file matches its record."""
    for rank in range(world):
        record = read_sidecar(checkpoint.record_file(rank))
        data = checkpoint.rank_file(rank)
        if not record or not data.is_file():
            return f"rank {rank}'s file is missing"
        if data.stat().st_size != record.get("bytes") or sha256_file(data) != record.get("sha256"):
            return f"rank {rank}'s file does not match its checksum (cut short or altered)"
    return None


def checkpoints_of(checkpoints: Path) -> list[Checkpoint]:
    """Every checkpoint in a run's checkpoints folder, newest first (complete or not)."""
    found = []
    for folder in checkpoints.glob("*-*"):
        unit, _, at = folder.name.rpartition("-")
        if folder.is_dir() and at.isdigit():
            found.append(Checkpoint(folder, int(at), unit))
    return sorted(found, key=lambda c: c.at, reverse=True)


def latest_complete(checkpoints: Path, world: int) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint every rank completed, and a line for each newer one passed over
    because it was damaged (an incomplete newest one, cut off by the end of the run, is
    passed over silently)."""
    skipped = []
    for checkpoint in checkpoints_of(checkpoints):
        why = damage(checkpoint, world)
        if why is None:
            return checkpoint, skipped
        if "missing" not in why:
            skipped.append(f"checkpoint at {checkpoint.label} is damaged: {why}")
    return None, skipped


def code_versions() -> dict[str, str]:
    """The releases whose arithmetic a checkpoint's continuation depends on."""
    return {"distlab": version("distlab"), "torch": torch.__version__}


# --- random generators: plain data -----------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """torch's (CPU and CUDA), numpy's and Python's global generators."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


# --- the per-rank object ------------------------------------------------------------------


@dataclass
class Checkpointer:
    """What a rank knows of checkpoints: when one is due, how to write it, and the state it
    resumes from (None on a fresh start)."""

    paths: RunPaths | None
    rank: int
    every: int = 0
    resumed: dict[str, Any] | None = None
    written: list[Checkpoint] = field(default_factory=list)

    def due(self, at: int) -> bool:
        return self.paths is not None and self.every > 0 and at % self.every == 0

    def save(self, at: int, unit: str, state: dict[str, Any], seconds: float) -> None:
        """Write this rank's state for `at` (a step or round count) and drop its checkpoints
        older than the previous one."""
        assert self.paths is not None
        checkpoint = Checkpoint(self.paths.checkpoints / folder_name(unit, at), at, unit)
        checkpoint.folder.mkdir(parents=True, exist_ok=True)
        data = checkpoint.rank_file(self.rank)
        atomic_write(data, lambda f: torch.save(state, f))
        record = {"bytes": data.stat().st_size, "sha256": sha256_file(data), "seconds": seconds}
        record |= {"at": at, "unit": unit, "versions": code_versions()}
        write_json(checkpoint.record_file(self.rank), record)
        self.written.append(checkpoint)
        self.prune()

    def prune(self) -> None:
        """Keep this rank's KEEP newest checkpoints; a folder goes once no rank has a file
        left in it."""
        for checkpoint in self.written[:-KEEP]:
            checkpoint.rank_file(self.rank).unlink(missing_ok=True)
            checkpoint.record_file(self.rank).unlink(missing_ok=True)
            try:
                checkpoint.folder.rmdir()
            except OSError:
                pass  # another rank's files are still there
        self.written = self.written[-KEEP:]

    @classmethod
    def open(cls, paths: RunPaths | None, rank: int, every: int) -> Checkpointer:
        """This rank's checkpointer; with a resume record, loaded with the state the run
        resumes from."""
        if paths is None or not paths.resume.is_file():
            return cls(paths, rank, every)
        resume = json.loads(paths.resume.read_text())
        start = Checkpoint(paths.checkpoints / resume["checkpoint"], resume["at"], "")
        state = torch.load(start.rank_file(rank), weights_only=True)
        # what this rank wrote before: pruned as the run goes on
        written = [c for c in reversed(checkpoints_of(paths.checkpoints)) if c.at <= state["at"]]
        return cls(paths, rank, every, state, written)


def write_resume(record: Path, checkpoint: Checkpoint) -> None:
    """Tell the ranks about to start which checkpoint they resume from (`record`: the run's
    RunPaths.resume)."""
    info = {"checkpoint": checkpoint.folder.name, "at": checkpoint.at, "unit": checkpoint.unit}
    write_json(record, info)
