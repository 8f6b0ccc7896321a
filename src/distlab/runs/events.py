"""The event files of a run directory: reading one, merging the ranks', following a growing one.

The only reader of events; the Recorder (metrics.py) is their only writer. A rank appends
one JSON object a line; a line a crash cut off, or one still being written, is never taken
for an event.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

Event = dict[str, Any]


def parse_lines(data: bytes) -> list[Event]:
    """The JSON objects of JSONL lines; a line that does not parse is skipped."""
    events = []
    for line in data.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def read_events(path: Path) -> list[Event]:
    """Read a JSONL event file; a last line cut off by a crash is skipped."""
    try:
        return parse_lines(Path(path).read_bytes())
    except FileNotFoundError:
        return []


def ordered(events: list[Event]) -> list[Event]:
    """Events ordered by time, then rank; an event without them counts as 0."""
    return sorted(events, key=lambda e: (seconds_of(e), rank_of(e)))


def merge(per_file: list[list[Event]]) -> list[Event]:
    """Every file's events in one list ordered by time then rank (one file: as written)."""
    if len(per_file) == 1:
        return per_file[0]
    return ordered([e for events in per_file for e in events])


def merge_events(rank_files: list[Path], out: Path) -> list[Event]:
    """Merge per-rank event files into one file ordered by time."""
    events = ordered([e for f in rank_files for e in read_events(f)])
    with open(out, "w") as fh:
        for e in events:
            fh.write(json.dumps(e) + "\n")
    return events


class EventFile:
    """Reads one growing JSONL file incrementally: a read parses only the bytes appended
    since the last one, and a last line still without its newline waits for the next read.
    A file replaced or cut shorter (a run started again) is read again from its start.

    With `keep`, `events` holds every event read so far; without it, nothing is held (a
    long run's events are handed on, not kept)."""

    def __init__(self, path: Path, keep: bool = True) -> None:
        self.path, self.keep = Path(path), keep
        self.events: list[Event] = []
        self.mtime: float | None = None
        self.restarted = False  # the last read found the file replaced or gone
        self._offset = 0
        self._identity: tuple[int, int] | None = None

    def read(self) -> list[Event]:
        """The complete events appended since the last read."""
        self.restarted = False
        try:
            stat = self.path.stat()
        except OSError:
            self._reset(None)
            return []
        self.mtime = stat.st_mtime
        identity = (stat.st_dev, stat.st_ino)
        if identity != self._identity or stat.st_size < self._offset:
            self._reset(identity)
        if stat.st_size == self._offset:
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read(stat.st_size - self._offset)
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        new = parse_lines(complete)
        if self.keep:
            self.events.extend(new)
        return new

    def changed(self) -> bool:
        """Read what was appended; True when the events read so far changed."""
        return bool(self.read()) or self.restarted

    def _reset(self, identity: tuple[int, int] | None) -> None:
        # a file seen before that is now gone or replaced: what was read of it is void
        self.restarted = self._identity is not None or bool(self.events)
        self.events, self._offset, self._identity = [], 0, identity


class EventTail:
    """Follows a growing JSONL file and hands each new complete event to a callback."""

    def __init__(self, path: Path, on_event: Callable[[Event], Any] | None = None) -> None:
        self.file = EventFile(path, keep=False)
        self.on_event = on_event

    @property
    def path(self) -> Path:
        return self.file.path

    def poll(self) -> None:
        """Hand on what was appended since the last poll."""
        if self.on_event is None:
            return
        for event in self.file.read():
            self.on_event(event)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): a figure an event can be trusted to hold."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def seconds_of(event: Event) -> float:
    """The event's time since the run started; 0 when it has none."""
    value = event.get("seconds")
    return value if is_number(value) else 0.0


def rank_of(event: Event) -> int:
    """The rank that wrote the event; 0 when it says none."""
    value = event.get("rank")
    return value if isinstance(value, int) else 0
