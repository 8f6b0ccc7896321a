"""What a pipeline stage measures: bytes across its cuts and the time it is busy.

A stage is busy while it computes a forward or backward pass of a microbatch; the rest of a
step it waits for a neighbour (the pipeline bubble of GPipe, Huang et al. 2019, plus the
waiting an unbalanced split adds). Intervals may overlap under RPC, where microbatches run
in parallel threads, so busy time is the length of their union.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class Meter:
    """Cut bytes (activations sent on, gradients sent back) and busy intervals of one stage,
    safe to update from several threads."""

    def __init__(self) -> None:
        self.sent = 0
        self.recv = 0
        self.step_seconds = 0.0
        self.intervals: list[tuple[float, float]] = []
        self.lock = threading.Lock()
        self.busy_before = 0.0  # busy seconds of the run before the checkpoint it resumed

    def add_bytes(self, sent: int = 0, recv: int = 0) -> None:
        with self.lock:
            self.sent += sent
            self.recv += recv

    @contextmanager
    def busy(self) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.add_interval(begin, time.perf_counter())

    def add_interval(self, begin: float, end: float) -> None:
        with self.lock:
            self.intervals.append((begin, end))

    def busy_seconds(self, since: int = 0) -> float:
        """Length of the union of the intervals from index `since` on."""
        with self.lock:
            spans = sorted(self.intervals[since:])
        total, reach = 0.0, float("-inf")
        for begin, end in spans:
            if end > reach:
                total += end - max(begin, reach)
                reach = end
        return total

    def as_tensor(self) -> torch.Tensor:
        """sent, recv, busy seconds, step seconds: one message to the lead."""
        values = [self.sent, self.recv, self.busy_before + self.busy_seconds(), self.step_seconds]
        return torch.tensor(values, dtype=torch.float64)

    def totals(self) -> dict[str, float]:
        """The running totals, for a checkpoint."""
        sent, recv, busy, steps = (float(v) for v in self.as_tensor())
        return {"sent": sent, "recv": recv, "busy": busy, "step_seconds": steps}

    def carry(self, totals: dict[str, float]) -> None:
        """Continue a checkpoint's totals: a resumed run's summary counts the whole run."""
        self.sent, self.recv = int(totals["sent"]), int(totals["recv"])
        self.busy_before, self.step_seconds = totals["busy"], totals["step_seconds"]


def stage_record(stage: int, values: torch.Tensor) -> dict:
    sent, recv, busy, steps = (float(v) for v in values)
    return {
        "stage": stage,
        "bytes_sent": int(sent),
        "bytes_recv": int(recv),
        "busy_seconds": round(busy, 6),
        "step_seconds": round(steps, 6),
    }


def nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
