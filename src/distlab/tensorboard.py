"""TensorBoardLog: a run's scalars as TensorBoard event files under RUN_DIR/tensorboard.

It is fed the lead rank's events while the run goes (train/*, test/*, comm/* per step or
round) and, at the end, the summary's figures (summary/*). Each scalar carries its event's
time, so TensorBoard's relative-time axis is training time.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MISSING = "--tensorboard needs the tensorboard package: pip install 'distlab[tensorboard]'"
# Keys that place an event (where, when, who) or repeat another figure: not plotted.
PLACE_KEYS = {"run", "rank", "role", "kind", "seconds", "step", "round", "epoch", "duration"}
# Training events also carry samples (a count, not a curve anyone reads).
TRAIN_SKIP = PLACE_KEYS | {"samples"}
COMM_KEYS = ("bytes_sent", "bytes_recv")
# The summary's result figures; every numeric `*bytes*` figure (measured and analytic bytes
# per step or round, whatever the strategy names them) is written besides.
SUMMARY_KEYS = (
    "final_accuracy",
    "best_accuracy",
    "final_loss",
    "final_train_loss",
    "samples_per_second",
    "train_seconds",
    "startup_seconds",
    "wall_seconds",
    "peak_rss_mb",
)
# Seconds between flushes: a live TensorBoard sees new points this soon.
FLUSH_SECONDS = 5


def check_available() -> None:
    """Refuse --tensorboard, before anything runs, where the package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError(MISSING)


class TensorBoardLog:
    """Writes the lead rank's scalars. Call it on each event; `finish` adds the summary and
    closes. Opened with a run directory, or later with `open` (a launcher-started run knows
    its directory only once rank 0 has made it); events before that carry no scalars."""

    def __init__(self, run_dir: Path | None = None, start: float | None = None, lead: int = 0):
        check_available()
        self.start = time.time() if start is None else start
        self.lead = lead
        self.writer = None
        self.seen: set[tuple] = set()
        if run_dir is not None:
            self.open(run_dir)

    def open(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), flush_secs=FLUSH_SECONDS)

    def __call__(self, event: dict[str, Any]) -> None:
        if self.writer is None or event.get("rank") != self.lead:
            return
        if event["kind"] in ("step", "round", "eval") and event_key(event) not in self.seen:
            self.seen.add(event_key(event))
            self.write_event(event)

    def tee(self, on_event: Callable | None) -> Callable:
        """An on_event that feeds this log, then `on_event` (when given)."""

        def both(event: dict[str, Any]) -> None:
            self(event)
            if on_event is not None:
                on_event(event)

        return both

    def write_event(self, event: dict[str, Any]) -> None:
        where = event.get("step", event.get("round"))
        if where is None:
            return
        when = self.start + event["seconds"]
        for tag, value in event_scalars(event).items():
            self.writer.add_scalar(tag, value, where, walltime=when)

    def finish(self, events: list[dict[str, Any]], summary: dict[str, Any]) -> None:
        """Write what the live feed missed (a launcher reads the lead's file every 0.2 s and
        not at all after a failure; under torchrun rank 0 may not be the lead), then the
        summary's figures; close whatever happens."""
        try:
            for event in events:
                self(event)
            self.write_summary(summary)
        finally:
            self.close()

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.writer is None:
            return
        where = summary.get("rounds") or summary.get("steps") or 0
        for key, value in summary_scalars(summary).items():
            self.writer.add_scalar(f"summary/{key}", value, where, walltime=time.time())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def event_key(event: dict[str, Any]) -> tuple:
    """Identifies an event seen live and again in the merged record."""
    return (event["kind"], event.get("step"), event.get("round"), event["seconds"])


def event_scalars(event: dict[str, Any]) -> dict[str, float]:
    """Tag -> value: an eval's numbers under test/, a step's or round's under train/, their
    traffic under comm/.

    >>> event_scalars({"kind": "step", "rank": 0, "seconds": 2.5, "step": 3, "loss": 0.5,
    ...                "samples": 32, "bytes_sent": 8, "dropped": False})
    {'train/loss': 0.5, 'comm/bytes_sent': 8}
    >>> event_scalars({"kind": "eval", "step": 3, "loss": 0.4, "accuracy": 0.9, "per_class": [1]})
    {'test/loss': 0.4, 'test/accuracy': 0.9}
    """
    if event["kind"] == "eval":
        return {f"test/{k}": v for k, v in event.items() if k not in PLACE_KEYS and is_number(v)}
    out = {}
    for key, value in event.items():
        if key in TRAIN_SKIP or not is_number(value):
            continue
        out[f"comm/{key}" if key in COMM_KEYS else f"train/{key}"] = value
    return out


def summary_scalars(summary: dict[str, Any]) -> dict[str, float]:
    """The result figures the summary has (a null one is absent, never 0)."""
    keys = [*SUMMARY_KEYS, *(k for k in summary if "bytes" in k)]
    return {k: summary[k] for k in keys if is_number(summary.get(k))}


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
