"""WorkerContext: what one process knows about its place in the run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from distlab.data.datasets import Dataset
from distlab.metrics import Recorder
from distlab.models import build_model
from distlab.runtime.comm import Communicator
from distlab.training import EvalResult, evaluate

if TYPE_CHECKING:
    from distlab.config import RunConfig


@dataclass
class WorkerContext:
    cfg: RunConfig
    rank: int
    world: int
    role: str
    comm: Communicator
    device: torch.device
    data: Dataset
    recorder: Recorder
    run_dir: Path | None = None
    state: dict = field(default_factory=dict)

    def build_model(self) -> nn.Module:
        """The run's model with the same seeded initial weights on every rank."""
        model = build_model(self.cfg.model, self.data.input_shape, self.data.classes, self.cfg.seed)
        return model.to(self.device)

    def rng(self, *stream: int) -> np.random.Generator:
        """A generator for one named purpose, derived from the run seed."""
        return np.random.default_rng([self.cfg.seed, *stream])

    def evaluate(self, model: nn.Module, **where: int) -> EvalResult:
        """Evaluate on the test set and record an eval event (lead rank only)."""
        result = evaluate(model, self.data.x_test, self.data.y_test, self.data.classes)
        self.recorder.eval(result.loss, result.accuracy, per_class=result.per_class, **where)
        return result

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
