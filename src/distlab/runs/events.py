"""The event files of a run directory: reading one, merging the ranks', following a growing one.

The only reader of events; the Recorder (metrics.py) is their only writer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_events(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL event file; a last line cut off by a crash is skipped."""
    events = []
    if not Path(path).exists():
        return events
    for line in Path(path).read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def merge_events(rank_files: list[Path], out: Path) -> list[dict[str, Any]]:
    """Merge per-rank event files into one file ordered by time."""
    events = [e for f in rank_files for e in read_events(f)]
    events.sort(key=lambda e: (e["seconds"], e["rank"]))
    with open(out, "w") as fh:
        for e in events:
            fh.write(json.dumps(e) + "\n")
    return events


class EventTail:
    """Follows a growing JSONL file and hands each new complete event to a callback."""

    def __init__(self, path: Path, on_event: Any = None) -> None:
        self.path, self.on_event, self._offset = Path(path), on_event, 0

    def poll(self) -> None:
        if self.on_event is None or not self.path.exists():
            return
        with open(self.path) as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        complete = chunk[: chunk.rfind("\n") + 1]
        self._offset += len(complete.encode())
        for line in complete.splitlines():
            try:
                self.on_event(json.loads(line))
            except json.JSONDecodeError:
                continue
