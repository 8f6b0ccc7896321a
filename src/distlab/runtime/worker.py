"""What every rank runs once its process group is up, whichever launcher started it.

A launcher is handed a `Job`: where the entry point is ("module:attribute" of an object with
`params`, the model of cfg.strategy, and `run(ctx, params)`), each rank's role and the lead
rank. It knows no strategy: the entry is imported by reference, in every process.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from distlab.config import RunConfig
from distlab.data.datasets import Dataset, load_dataset
from distlab.metrics import Recorder
from distlab.models import count_parameters
from distlab.runtime.checkpoint import Checkpointer
from distlab.runtime.comm import Communicator
from distlab.runtime.context import WorkerContext, move_dataset, seed_generators
from distlab.runtime.environ import elastic_restart, machine_load
from distlab.runtime.shm import make_communicator
from distlab.training import compute_gradients, make_optimizer

if TYPE_CHECKING:
    from distlab.data.partition import Partition
    from distlab.runs.directory import RunPaths
    from distlab.runtime.remote_events import RunView


@dataclass(frozen=True)
class Job:
    """What a launcher runs: the entry point on every rank, each rank's role, the lead, and
    what the caller hands every rank (the run directory's layout, the data partition)."""

    entry: str
    """"module:attribute" of an object with `params` and `run(ctx, params)`."""
    roles: tuple[str, ...]
    """The role of each rank; its length is the number of processes."""
    lead: int = 0
    """The rank whose events are the run's record and which writes model.pt."""
    layout: Callable[[Path], RunPaths] | None = None
    """RunPaths of a run directory: the caller's, which alone knows the directory's file
    names. None: the job writes no run directory."""
    partition: Partition | None = field(default=None, compare=False)
    """The run's data partition, computed once by the caller and handed to every rank
    (None: not computed there)."""

    @property
    def world(self) -> int:
        return len(self.roles)

    def paths(self, run_dir: Path | None) -> RunPaths | None:
        """Where this job's records go in `run_dir` (None: no run directory)."""
        if run_dir is None:
            return None
        if self.layout is None:
            raise ValueError("a job that writes a run directory needs its layout")
        return self.layout(Path(run_dir))


@dataclass
class RankSetup:
    """One process's place in a launch: what `run_worker` needs besides the config and the
    Job. A launcher without a process group passes its own `comm`, `device` and `shared`."""

    rank: int
    paths: RunPaths | None
    """Where the run's records go; None: a rank that writes none."""
    start: float
    """The run's clock origin (epoch seconds)."""
    local_rank: int = 0
    data: Dataset | None = None
    """The dataset, when the launcher has it in this process (else loaded here)."""
    on_event: Callable | None = None
    comm: Communicator | None = None
    device: torch.device | None = None
    shared: dict | None = None
    view: RunView | None = None
    """Which ranks see the run directory, where the ranks are on machines that may not
    share it (a launcher-started run); None: every rank sees it."""


def load_entry(ref: str) -> Any:
    """The object at "module:attribute", imported in this process."""
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


def parse_config(cfg_json: str, entry: Any) -> RunConfig:
    """A config sent to another process, its strategy read by the entry's own Params: a
    strategy registered at run time is unknown to a fresh interpreter's registry."""
    raw = json.loads(cfg_json)
    raw["strategy"] = entry.params.model_validate(raw["strategy"])
    return RunConfig.model_validate(raw)


def notify(on_event: Callable | None, text: str) -> None:
    """A status line for the launcher's display while the run is slow to start."""
    if on_event is not None:
        on_event({"kind": "status", "text": text})


def resolve_device(cfg: RunConfig, local_rank: int = 0) -> torch.device:
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if not want_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is present")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def thread_count(cfg: RunConfig, world: int) -> int:
    return cfg.threads or max(1, (os.cpu_count() or 1) // world)


def run_worker(cfg: RunConfig, job: Job, setup: RankSetup) -> None:
    """The entry point every process enters once its process group is up: build the rank's
    context, warm up, train under the job's entry, record the end."""
    entry = load_entry(job.entry)
    ctx = open_context(cfg, job, setup)
    recorder, rank = ctx.recorder, ctx.rank
    seed_generators(cfg.seed, rank)
    try:
        params = warm_up(ctx)
        resumed = ctx.checkpoints.resumed if ctx.resuming else None
        # a resumed rank's "start" is in its event file already
        recorder.phase(
            "resume" if resumed else "start",
            at=resumed["at"] if resumed else None,
            checkpoint_seconds=resumed["recorder"]["seconds"] if resumed else None,
            elastic_restart=elastic_restart() or None,
            pid=os.getpid(),
            device=str(ctx.device),
            exchange=ctx.comm.transport,
            threads=torch.get_num_threads(),
            machine=machine_load(),
            lead_rank=ctx.lead,
            params=params if ctx.is_lead else None,
        )
        # Start the clock of the "train" phase on every rank at once: spawned interpreters
        # come up seconds apart on a busy machine, and the first step would absorb the wait.
        ctx.comm.barrier()
        notify(setup.on_event, "training")
        entry.run(ctx, cfg.strategy)
        recorder.comm_totals()
        recorder.phase("end", peak_rss_mb=peak_rss_mb(), machine=machine_load())
    finally:
        recorder.close()
    if setup.view is not None:
        setup.view.deliver()  # rank 0 then holds the events of ranks that do not see the run


def open_context(cfg: RunConfig, job: Job, setup: RankSetup) -> WorkerContext:
    """The rank's WorkerContext: its device, data, communicator, checkpoints (a resumed
    rank's event file cut back to its checkpoint) and recorder."""
    rank, paths, start = setup.rank, setup.paths, setup.start
    device = setup.device or resolve_device(cfg, setup.local_rank)
    data = setup.data or load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
    comm = setup.comm or make_communicator(cfg, device)
    events = paths.rank_events(rank) if paths is not None else None
    checkpoints = Checkpointer.open(paths, rank, cfg.checkpoint.every)
    if checkpoints.resumed is not None:
        start = rewind_events(events, checkpoints.resumed["recorder"], start)
    name = paths.root.name if paths is not None else "run"
    recorder = Recorder(
        events,
        name,
        rank,
        job.roles[rank],
        lead=rank == job.lead,
        start=start,
        comm=comm,
        on_event=setup.on_event,
    )
    return WorkerContext(
        cfg=cfg,
        rank=rank,
        world=job.world,
        role=job.roles[rank],
        comm=comm,
        device=device,
        data=move_dataset(data, device),
        recorder=recorder,
        paths=paths,
        lead=job.lead,
        shared=setup.shared,
        checkpoints=checkpoints,
        partition=job.partition,
    )


def rewind_events(events: Path | None, position: dict, start: float) -> float:
    """Cut this rank's event file back to where its checkpoint was taken (what came after is
    done again), and return the clock origin that continues the checkpoint's seconds."""
    if events is not None and events.is_file() and events.stat().st_size > position["offset"]:
        os.truncate(events, position["offset"])
    return start - position["seconds"]


def warm_up(ctx: WorkerContext) -> int:
    """Pay one-time costs before the barrier, so that no rank pays them on the clock: the
    first backward pass starts autograd's threads and the first update initializes the
    optimizer's kernels (make_optimizer's optimizers import no torch._dynamo, which cost
    about a second here). The model is thrown away and the random streams are left as they
    were. Returns the model's parameter count."""
    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        model = ctx.build_model()
        optimizer = make_optimizer(model.parameters(), ctx.cfg.optimizer)
        batch = slice(0, ctx.cfg.batch_size)
        compute_gradients(model, ctx.data.x_train[batch], ctx.data.y_train[batch])
        optimizer.step()
    return count_parameters(model)


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
