"""WorkerContext: what one process knows about its place in the run."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from distlab.data.datasets import Dataset
from distlab.metrics import Recorder
from distlab.models import build_model
from distlab.runtime.checkpoint import Checkpointer, rng_state, set_rng_state
from distlab.runtime.comm import Communicator, SoloCommunicator
from distlab.runtime.environ import elastic_restart
from distlab.runtime.failures import has_fired, record_fault
from distlab.training import EvalResult, evaluate
from distlab.transforms.chain import Chain, describe, make_chain

if TYPE_CHECKING:
    from distlab.config import RunConfig
    from distlab.data.partition import Partition
    from distlab.runs.directory import RunPaths


@dataclass
class WorkerContext:
    """One rank's view of the run: config, place, channel, data, recorder and records."""

    cfg: RunConfig
    rank: int
    world: int
    role: str
    comm: Communicator
    device: torch.device
    data: Dataset
    recorder: Recorder
    paths: RunPaths | None = None
    """Where the run's records live (None: a rank that writes no run directory)."""
    lead: int = 0
    """The rank whose events are the run's record and that writes model.pt."""
    shared: dict | None = None
    """Objects the launcher shares among ranks without a process group (the shared
    launcher's model in shared memory, lock and counters); None under other launchers."""
    checkpoints: Checkpointer | None = None
    """When checkpoints are due, and the state this rank resumes from (None: no run dir)."""
    partition: Partition | None = None
    """The run's data partition as the launching process computed it (None: not computed
    there, or the run divides no data)."""

    @property
    def resuming(self) -> bool:
        return self.checkpoints is not None and self.checkpoints.resumed is not None

    def checkpoint_due(self, at: int) -> bool:
        return self.checkpoints is not None and self.checkpoints.due(at)

    def save_checkpoint(
        self, at: int, unit: str, objects: dict, position: dict, extra: dict | None = None
    ) -> None:
        """Write this rank's checkpoint at `at` steps or rounds: the state_dict of each of
        `objects` (models, optimizers), the random generators, `position` (where the
        schedule stands), the recorder's and communicator's counters, and `extra` (what the
        algorithm keeps besides; tensors and plain data only)."""
        assert self.checkpoints is not None
        recorder = self.recorder.position()
        state = {
            "at": at,
            "unit": unit,
            "position": position,
            "objects": {name: obj.state_dict() for name, obj in objects.items()},
            "rng": rng_state(),
            "recorder": recorder,
            "comm": self.comm.counters(),
            "extra": extra or {},
        }
        self.checkpoints.save(at, unit, state, recorder["seconds"])

    def restore(self, objects: dict) -> dict | None:
        """On a resumed run, load the checkpoint into `objects` and the generators, continue
        the counters, and return the checkpoint (its "position" and "extra"); None on a
        fresh start."""
        if not self.resuming:
            return None
        state = self.checkpoints.resumed
        for name, obj in objects.items():
            obj.load_state_dict(state["objects"][name])
        set_rng_state(state["rng"])
        self.comm.restore_counters(state["comm"])
        self.recorder.restore(state["recorder"])
        return state

    @property
    def is_lead(self) -> bool:
        return self.rank == self.lead

    @classmethod
    def solo(
        cls,
        cfg: RunConfig,
        data: Dataset,
        role: str = "worker",
        recorder: Recorder | None = None,
        paths: RunPaths | None = None,
    ) -> WorkerContext:
        """A context with no process group: one rank alone, its traffic counted by a
        SoloCommunicator (a Hogwild thread, a Flower client, a board's host side)."""
        comm = SoloCommunicator()
        recorder = recorder or Recorder(None, "solo", 0, role, comm=comm)
        return cls(cfg, 0, 1, role, comm, torch.device("cpu"), data, recorder, paths)

    def build_model(self) -> nn.Module:
        """The run's model with the same seeded initial weights on every rank."""
        model = build_model(self.cfg.model, self.data.input_shape, self.data.classes, self.cfg.seed)
        return model.to(self.device)

    def compressor(self, model: nn.Module, stream: int | None = None) -> Chain | None:
        """The run's compression chain for the updates this rank sends of `model`'s size
        (None when compress.kind is none). `stream` keeps the random draws of different
        senders apart (default: this rank). The lead records the chain's sizes once, in a
        `compress` phase event, for the summary."""
        shapes = [tuple(p.shape) for p in model.parameters()]
        stream = self.rank if stream is None else stream
        chain = make_chain(self.cfg.compress, shapes, self.cfg.seed, stream)
        if chain is not None and self.is_lead:
            self.recorder.phase("compress", **describe(chain))
        return chain

    def evaluate(self, model: nn.Module, **where: int) -> EvalResult:
        """Evaluate on the test set and record an eval event (lead rank only)."""
        begin = time.perf_counter()
        result = evaluate(model, self.data.x_test, self.data.y_test, self.data.classes)
        self.recorder.eval(
            result.loss,
            result.accuracy,
            per_class=result.per_class,
            duration=time.perf_counter() - begin,
            **where,
        )
        return result

    def save_model(self, model: nn.Module) -> None:
        """The lead rank writes the final weights (a plain state_dict, read back with
        torch.load(..., weights_only=True))."""
        if self.is_lead and self.paths is not None and self.cfg.save_model:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            torch.save(state, self.paths.model)

    def maybe_fault(self, step: int) -> None:
        """Fire the configured fault on this rank at this step (robustness checks), once per
        run directory: a torchrun restart of the run goes on past it."""
        fault = self.cfg.fault
        if fault is None or fault.rank != self.rank or fault.step != step:
            return
        if self.paths is not None:
            if has_fired(self.paths.fault, fault):
                return
            try:
                record_fault(self.paths.fault, fault, elastic_restart())
            except OSError:
                pass  # a node without the shared run directory: the fault still fires
        self.recorder.flush()
        if fault.kind == "raise":
            raise RuntimeError(f"injected fault at step {step}")
        if fault.kind == "exit":
            os._exit(3)
        while True:  # hang: a rank that stops answering
            time.sleep(1)

    def check_loss(self, loss: float, step: int) -> None:
        """Stop at the first non-finite loss: every later step would train on NaN."""
        if not math.isfinite(loss):
            value = "NaN" if math.isnan(loss) else "Inf"
            raise FloatingPointError(
                f"loss became {value} at step {step} on rank {self.rank}; lower --lr or "
                "check the data"
            )

    def labels(self) -> np.ndarray:
        return self.data.y_train.cpu().numpy()


def move_dataset(data: Dataset, device: torch.device) -> Dataset:
    if device.type == "cpu":
        return data
    return Dataset(
        data.name,
        data.x_train.to(device),
        data.y_train.to(device),
        data.x_test.to(device),
        data.y_test.to(device),
        data.classes,
    )


def seed_generators(seed: int, rank: int) -> None:
    """Seed torch's global generator (dropout and anything else drawing from it) from the run
    seed and the rank, so a run is repeatable and ranks do not share a dropout stream."""
    torch.manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))
