"""The inline launcher: a one-process run inside the caller's process."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from distlab.config import RunConfig
from distlab.data.datasets import Dataset
from distlab.runtime.failures import RunFailed, read_errors, write_error
from distlab.runtime.worker import Job, RankSetup, run_worker, thread_count


def run_inline(
    cfg: RunConfig,
    job: Job,
    run_dir: Path,
    start: float,
    data: Dataset,
    on_event: Callable | None = None,
    follow: Callable[[], None] | None = None,
) -> None:
    """A one-process run inside the caller's process: a real gloo group of size 1. Its
    events reach `on_event` from its own recorder: `follow` is not needed."""
    paths = job.paths(run_dir)
    previous = torch.get_num_threads()
    torch.set_num_threads(thread_count(cfg, 1))
    dist.init_process_group(
        "gloo", store=dist.HashStore(), rank=0, world_size=1, timeout=timedelta(seconds=cfg.timeout)
    )
    try:
        # The run seeds torch's global generator; the caller's stream is left as it was.
        with torch.random.fork_rng(devices=[]):
            run_worker(cfg, job, RankSetup(0, paths, start, data=data, on_event=on_event))
    except Exception as exc:  # the same one-line report as a failed rank of a larger run
        write_error(paths, 0, exc)
        errors = read_errors(paths, [0])
        raise RunFailed(f"rank 0 failed: {errors.get(0, repr(exc))}", errors) from exc
    finally:
        dist.destroy_process_group()
        torch.set_num_threads(previous)
