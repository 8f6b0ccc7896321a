"""Recorder: every rank writes events of one fixed schema to its own JSONL file.

Event keys: run, rank, role, kind (step|round|eval|comm|phase), seconds (since the run
started) and, as they apply, step, round, epoch, loss, accuracy, samples, duration,
bytes_sent, bytes_recv. Every plot and table is derived from these events.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import IO, Any

FLUSH_SECONDS = 0.5


class Recorder:
    """Writes this rank's events. `lead=False` makes step/round/eval calls do nothing, so a
    training loop never branches on "am I the logging rank"."""

    def __init__(
        self,
        path: Path | None,
        run: str,
        rank: int,
        role: str,
        lead: bool = True,
        start: float | None = None,
        comm: Any = None,
        on_event: Any = None,
    ) -> None:
        self.run, self.rank, self.role, self.lead = run, rank, role, lead
        self.start = start if start is not None else time.time()
        self.comm = comm
        self.on_event = on_event
        self._file: IO[str] | None = open(path, "a") if path else None  # noqa: SIM115
        self._last_flush = time.monotonic()
        self._last_bytes = (0, 0)
        self.sim_seconds: float | None = None
        """The simulated clock of the last step or round event that carried one: an eval
        event after it carries it too (the time its model was reached)."""

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"run": self.run, "rank": self.rank, "role": self.role, "kind": kind}
        event["seconds"] = round(time.time() - self.start, 6)
        event.update({k: _clean(v) for k, v in fields.items() if v is not None})
        if self._file is not None:
            self._file.write(json.dumps(event) + "\n")
            # Milestones (a rank started, training began) are rare and what watchers wait
            # for: they go to disk at once; steps are flushed at most every FLUSH_SECONDS.
            if kind == "phase" or time.monotonic() - self._last_flush > FLUSH_SECONDS:
                self.flush()
        if self.on_event is not None:
            self.on_event(event)
        return event

    def _comm_delta(self) -> dict[str, int]:
        if self.comm is None:
            return {}
        sent, recv = self.comm.bytes_sent, self.comm.bytes_recv
        delta = {"bytes_sent": sent - self._last_bytes[0], "bytes_recv": recv - self._last_bytes[1]}
        self._last_bytes = (sent, recv)
        return delta

    def step(self, step: int, loss: float, samples: int, duration: float, **extra: Any) -> None:
        """One optimizer update: its mean loss, the samples it used, the seconds it took."""
        delta = self._comm_delta()
        self._note_sim(extra)
        if self.lead or extra.pop("all_ranks", False):
            self.emit(
                "step", step=step, loss=loss, samples=samples, duration=duration, **delta, **extra
            )

    def round(self, round: int, loss: float, samples: int, duration: float, **extra: Any) -> None:
        """One federated or averaging round."""
        delta = self._comm_delta()
        self._note_sim(extra)
        if self.lead:
            self.emit(
                "round",
                round=round,
                loss=loss,
                samples=samples,
                duration=duration,
                **delta,
                **extra,
            )

    def eval(self, loss: float, accuracy: float, **extra: Any) -> None:
        if self.lead:
            if self.sim_seconds is not None:
                extra.setdefault("sim_seconds", self.sim_seconds)
            self.emit("eval", loss=loss, accuracy=accuracy, **extra)

    def _note_sim(self, extra: dict[str, Any]) -> None:
        if extra.get("sim_seconds") is not None:
            self.sim_seconds = extra["sim_seconds"]

    def phase(self, name: str, **extra: Any) -> None:
        self.emit("phase", phase=name, **extra)

    def comm_totals(self) -> None:
        """Write this rank's communication totals (every rank does)."""
        if self.comm is not None:
            self.emit("comm", **self.comm.stats())

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        self._last_flush = time.monotonic()

    def position(self) -> dict[str, Any]:
        """Where this recorder stands, for a checkpoint: the size of its event file (flushed
        first), its clock, and the byte counters its next step's deltas start from."""
        self.flush()
        offset = self._file.tell() if self._file is not None else 0
        seconds = round(time.time() - self.start, 6)
        return {
            "offset": offset,
            "seconds": seconds,
            "last_bytes": list(self._last_bytes),
            "sim_seconds": self.sim_seconds,
        }

    def restore(self, position: dict[str, Any]) -> None:
        """Continue from a checkpoint's position (the file was cut back to it on opening)."""
        self._last_bytes = tuple(position["last_bytes"])
        self.sim_seconds = position.get("sim_seconds")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _clean(value: Any) -> Any:
    """JSON has no NaN; keep numbers plain and lists of numbers plain."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float):
        return round(value, 8) if math.isfinite(value) else None
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
