"""Resuming a run: which runs can be resumed, from which checkpoint, with which config.

`resumable_run` checks everything before a process starts (one-line ValueErrors): the
directory is a run, the run did not complete, it has a complete checkpoint, and a config
given with it differs from the run's own only in keys that do not change the result.
`reopen_run_dir` then clears the records of the run's end (summary, merged events, error
reports), drops checkpoints newer than the chosen one and writes resume.json for the ranks.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distlab.config import RunConfig, config_data, validate_config
from distlab.runs.directory import RunPaths, read_json
from distlab.runtime.checkpoint import (
    Checkpoint,
    checkpoints_of,
    code_versions,
    latest_complete,
    read_sidecar,
    write_resume,
)
from distlab.runtime.failures import has_fired

if TYPE_CHECKING:
    from distlab.tensorboard import TensorBoardLog

# Keys a resumed run may change: where and how fast it runs, not what it computes (and the
# injected fault that stopped it, which a resume leaves out once it fired).
RESUME_FREE_KEYS = frozenset(
    {
        "name",
        "out_dir",
        "data_dir",
        "download",
        "threads",
        "timeout",
        "intra_node",
        "oversubscribe",
        "save_model",
        "tensorboard",
        "checkpoint",
        "fault",
    }
)


@dataclass
class ResumableRun:
    """A run that can go on: its directory and the config it goes on with."""

    run_dir: Path
    config: RunConfig

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.run_dir)

    def checkpoint_for(self, world: int) -> Checkpoint:
        """The newest complete checkpoint (ValueError when there is none)."""
        checkpoint = self.latest_checkpoint(world)
        if checkpoint is None:
            raise ValueError(
                f"run {str(self.run_dir)!r} has no complete checkpoint to resume from (a run "
                "writes them with --set checkpoint.every=N)"
            )
        return checkpoint

    def latest_checkpoint(self, world: int) -> Checkpoint | None:
        """The newest complete checkpoint, or None; a newer damaged one is passed over with
        a warning that names it."""
        checkpoint, skipped = latest_complete(self.paths.checkpoints, world)
        for line in skipped:
            warnings.warn(f"{line}; resuming from an earlier one", CheckpointWarning, stacklevel=4)
        if checkpoint is not None:
            check_versions(checkpoint)
        return checkpoint


class CheckpointWarning(UserWarning):
    """A checkpoint was passed over because it is damaged."""


def resumable_run(run_dir: Path, config: RunConfig | dict[str, Any] | None) -> ResumableRun:
    """The run at `run_dir`, if it can be resumed with `config` (None: its own)."""
    paths = RunPaths(run_dir)
    if not paths.config.is_file():
        raise ValueError(
            f"--resume: {str(run_dir)!r} is not a run directory (no {paths.config.name})"
        )
    summary = paths.summary
    if summary.is_file() and read_json(summary).get("status") == "completed":
        raise ValueError(f"--resume: run {str(run_dir)!r} already completed; nothing to resume")
    own = without_fired_fault(run_dir, validate_config(read_json(paths.config)))
    if config is not None:
        given = config if isinstance(config, RunConfig) else validate_config(config_data(config))
        check_same_config(own, given)
        own = given
    if not checkpoints_of(paths.checkpoints):
        raise ValueError(
            f"--resume: run {str(run_dir)!r} has no checkpoint (a run writes them with "
            "--set checkpoint.every=N)"
        )
    return ResumableRun(run_dir, own)


def without_fired_fault(run_dir: Path, cfg: RunConfig) -> RunConfig:
    """`cfg` less its injected fault when that fault already fired in `run_dir`: the resumed
    run goes on past it instead of failing the same way again (a config that gives the fault
    again, `--set fault.*`, fires it anew)."""
    if cfg.fault is not None and has_fired(RunPaths(Path(run_dir)).fault, cfg.fault):
        return cfg.model_copy(update={"fault": None})
    return cfg


def check_same_config(own: RunConfig, given: RunConfig) -> None:
    """ValueError naming each key whose value differs, but for RESUME_FREE_KEYS."""
    a, b = flatten(json.loads(own.to_json())), flatten(json.loads(given.to_json()))
    changed = [
        f"{key} {a.get(key)!r} -> {b.get(key)!r}"
        for key in sorted(set(a) | set(b))
        if key.split(".")[0] not in RESUME_FREE_KEYS and a.get(key) != b.get(key)
    ]
    if changed:
        raise ValueError(
            f"--resume: the config differs from the run's in {', '.join(changed)}; a resumed "
            "run keeps its config (start a new run to change it)"
        )


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_versions(checkpoint: Checkpoint) -> None:
    """A checkpoint from another distlab or torch release may not replay the same steps."""
    record = read_sidecar(checkpoint.record_file(0))
    theirs = record.get("versions", {})
    ours = code_versions()
    differ = [f"{k} {theirs.get(k)} (now {v})" for k, v in ours.items() if theirs.get(k) != v]
    if differ:
        raise ValueError(
            f"--resume: the checkpoint at {checkpoint.label} was written by "
            f"{', '.join(differ)}; resume it with the versions that wrote it"
        )


def reopen_run_dir(
    run_dir: Path, checkpoint: Checkpoint, board: TensorBoardLog | None = None
) -> Path:
    """Make `run_dir` ready to go on from `checkpoint`: the records of its end are removed
    (finish_run writes them again), newer checkpoints dropped, the resume record written."""
    paths = RunPaths(run_dir)
    clear_end(paths)
    for newer in checkpoints_of(paths.checkpoints):
        if newer.at > checkpoint.at:
            shutil.rmtree(newer.folder, ignore_errors=True)
    write_resume(paths.resume, checkpoint)
    if board is not None:
        board.open(run_dir)
    return run_dir


def clear_end(paths: RunPaths) -> None:
    """Remove what finish_run wrote at the run's end: the summary, the merged events and the
    ranks' error reports."""
    for path in (paths.summary, paths.merged_events):
        path.unlink(missing_ok=True)
    shutil.rmtree(paths.errors_dir, ignore_errors=True)


# --- torchrun restarts ---------------------------------------------------------------------


def elastic_identity() -> dict[str, str] | None:
    """What names one torchrun job across its restarts: its rendezvous id and endpoint."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    where = f"{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}"
    return {"run_id": os.environ["TORCHELASTIC_RUN_ID"], "master": where}


def mark_elastic(run_dir: Path) -> None:
    """Under torchrun, note which job the run directory belongs to, so that a restart of
    the same job finds it again (a default run name holds the time it was made)."""
    identity = elastic_identity()
    if identity is not None:
        RunPaths(run_dir).elastic.write_text(json.dumps(identity) + "\n")


def elastic_run(cfg: RunConfig) -> ResumableRun | None:
    """The run directory of this torchrun job, which its agent restarted; None when none
    of the directories in cfg.out_dir is marked with this job's identity."""
    identity = elastic_identity()
    out = Path(cfg.out_dir)
    if identity is None or not out.is_dir():
        return None
    candidates = (RunPaths(d).elastic for d in out.iterdir())
    marked = [m for m in candidates if m.is_file() and read_sidecar(m) == identity]
    if not marked:
        return None
    paths = RunPaths(max(marked, key=lambda m: m.stat().st_mtime).parent)
    run_dir = paths.root
    check_same_config(validate_config(read_json(paths.config)), cfg)
    return ResumableRun(run_dir, cfg)


def restart_from_scratch(run_dir: Path, board: TensorBoardLog | None = None) -> Path:
    """A restarted run that had not reached a checkpoint starts over in its directory."""
    paths = RunPaths(run_dir)
    clear_end(paths)
    for path in paths.rank_event_files():
        path.unlink()
    shutil.rmtree(paths.checkpoints, ignore_errors=True)
    paths.resume.unlink(missing_ok=True)
    if board is not None:
        board.open(run_dir)
    return run_dir
