"""Read a folder of run directories into the dashboard's JSON: the run list and one run's
detail, following the event files of live runs as they grow.

What a run directory is, and where its records lie, is runs/directory.py's to say; the event
files are read incrementally by runs/events.py. A run is finished once it has its summary,
and then its merged events are read instead of each rank's. RUNS_DIR holds run directories
and, one level down, the run directories of sweeps or other folders. views.py derives what
the page shows from the events. Nothing here imports torch or a web framework.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distlab.dashboard.views import (
    build_detail,
    describe,
    lead_events,
    progress,
    summary_progress,
)
from distlab.runs.directory import (
    RunPaths,
    find_runs,
    find_sweeps,
    is_run_dir,
    read_json_or_none,
)
from distlab.runs.events import Event, EventFile, is_number, merge

STALE_SECONDS = 600.0  # a run without a summary whose files stood still this long is dead
# A view of a long run costs time to rebuild: one that took over SLOW_BUILD seconds is rebuilt
# no sooner than REBUILD_FACTOR times that after, so following a run of any length spends at
# most a tenth of a core; a short run's view is rebuilt on every change.
SLOW_BUILD = 0.05
REBUILD_FACTOR = 10.0


def read_sweeps(root: Path) -> list[dict[str, Any]]:
    """Each sweep folder under root: its name, cell count and cells per status."""
    sweeps = []
    for child, record in find_sweeps(root):
        cells = record.get("cells") or []
        statuses = Counter(str(c.get("status", "pending")) for c in cells if isinstance(c, dict))
        sweeps.append(
            {
                "path": child.relative_to(root).as_posix(),
                "name": str(record.get("name") or child.name),
                "cells": len(cells),
                "status": dict(statuses),
            }
        )
    return sweeps


def file_started(file: EventFile) -> float | None:
    """When the run started, by the clock: the file was last written about when its last
    event happened, and an event's `seconds` count from the start."""
    last = next((e["seconds"] for e in reversed(file.events) if is_number(e.get("seconds"))), None)
    return file.mtime - last if file.mtime is not None and last is not None else None


class RunState:
    """What the dashboard holds of one run directory; each file is read again only when it
    changed, and the derived detail is rebuilt only when the events changed."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.paths = RunPaths(run_dir)
        self.files: dict[str, EventFile] = {}
        self.version = 0
        self._json: dict[Path, tuple[tuple[int, int], dict[str, Any] | None]] = {}
        self._events: list[Event] | None = None
        self._views: dict[str, tuple[int, float, float, Any]] = {}

    def config(self) -> dict[str, Any] | None:
        return self.json_file(self.paths.config)

    def summary(self) -> dict[str, Any] | None:
        return self.json_file(self.paths.summary)

    def json_file(self, path: Path) -> dict[str, Any] | None:
        """The JSON object at `path`, read again only when the file changed."""
        try:
            stat = path.stat()
        except OSError:
            self._json.pop(path, None)
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if path not in self._json or self._json[path][0] != stamp:
            self._json[path] = (stamp, read_json_or_none(path))
        return self._json[path][1]

    def events(self) -> list[Event]:
        """Every event read so far, ordered by time then rank."""
        paths = self.paths.event_files()
        if [f.path for f in self.files.values()] != paths:
            self.files = {p.name: self.files.get(p.name) or EventFile(p) for p in paths}
            self._events = None
        changed = [f.changed() for f in self.files.values()]
        if any(changed) or self._events is None:
            self.version += 1
            self._events = merge([f.events for f in self.files.values()])
        return self._events

    def updated(self) -> float | None:
        """The last time any of the run's files changed."""
        paths = [self.paths.config, self.paths.summary, *self.paths.event_files()]
        times = []
        for path in paths:
            try:
                times.append(path.stat().st_mtime)
            except OSError:
                continue
        return max(times) if times else None

    def started(self, summary: dict[str, Any] | None) -> float | None:
        """The run's start by the clock (the origin of its events' `seconds`)."""
        wall = summary.get("wall_seconds") if summary else None
        if is_number(wall):
            try:
                return self.paths.summary.stat().st_mtime - wall
            except OSError:
                pass
        starts = [s for f in self.files.values() if (s := file_started(f)) is not None]
        if starts:
            return min(starts)
        try:
            return self.paths.config.stat().st_mtime
        except OSError:
            return None

    def view(self, name: str, build: Callable[[list[Event]], Any]) -> Any:
        """build(events), kept until the events change (and, for a slow build, a while
        longer: see REBUILD_FACTOR)."""
        events = self.events()
        kept = self._views.get(name)
        if kept is not None:
            version, built, cost, value = kept
            wait = REBUILD_FACTOR * cost if cost > SLOW_BUILD else 0.0
            if version == self.version or time.monotonic() - built < wait:
                return value
        begin = time.monotonic()
        value = build(events)
        self._views[name] = (self.version, begin, time.monotonic() - begin, value)
        return value


# --- the run list ------------------------------------------------------------------------


def run_status(summary: dict[str, Any] | None, updated: float | None, now: float) -> str:
    """The summary's status once there is one; before that running, or stale when no file
    changed for STALE_SECONDS (the run died without writing its summary)."""
    if summary is not None:
        return str(summary.get("status") or "unknown")
    if updated is not None and now - updated > STALE_SECONDS:
        return "stale"
    return "running"


def run_row(state: RunState, path: str, group: str | None, now: float) -> dict[str, Any]:
    """One line of the run list; a finished run is read from its summary alone."""
    config = state.config() or {}
    summary = state.summary()
    if summary is not None:
        figures = summary_progress(summary)
    else:
        figures = state.view("progress", lambda events: progress(lead_events(events)))
    return {
        "name": state.run_dir.name if path != "." else state.run_dir.resolve().name,
        "path": path,
        "group": group,
        **describe(config),
        **figures,
        "status": run_status(summary, state.updated(), now),
        "error": summary.get("error") if summary else None,
        "started": state.started(summary),
        "updated": state.updated(),
    }


def run_detail_of(state: RunState, path: str, group: str | None, now: float) -> dict[str, Any]:
    row = run_row(state, path, group, now)
    summary = state.summary()
    detail = state.view("detail", lambda events: build_detail(events, summary))
    return {**row, **detail, "config": state.config(), "now": now}


# --- the reader the app holds -------------------------------------------------------------


class RunsReader:
    """Reads RUNS_DIR for the app, keeping what it read so that a poll re-reads only the
    files that changed. Safe to call from several threads."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._states: dict[str, RunState] = {}
        self._lock = threading.Lock()

    def runs(self, now: float | None = None) -> dict[str, Any]:
        """The run list (newest first) and the sweeps."""
        now = time.time() if now is None else now
        with self._lock:
            found = {self.relative(d): (d, group) for d, group in find_runs(self.root)}
            self._states = {p: self._states.get(p) or RunState(d) for p, (d, _) in found.items()}
            rows = [run_row(self._states[p], p, g, now) for p, (_, g) in found.items()]
        rows.sort(key=lambda r: (r["started"] or 0.0, r["path"]), reverse=True)
        return {"root": str(self.root), "now": now, "runs": rows, "sweeps": read_sweeps(self.root)}

    def detail(self, path: str, now: float | None = None) -> dict[str, Any] | None:
        """One run's detail; None when `path` is not a run directory inside RUNS_DIR."""
        run_dir = self.resolve(path)
        if run_dir is None:
            return None
        now = time.time() if now is None else now
        key = self.relative(run_dir)
        group = self.relative(run_dir.parent) if run_dir != self.root else None
        with self._lock:
            state = self._states.setdefault(key, RunState(run_dir))
            return run_detail_of(state, key, None if group == "." else group, now)

    def resolve(self, path: str) -> Path | None:
        """RUNS_DIR/path when it is a run directory at most two levels inside RUNS_DIR;
        None for anything else, a path that climbs out of it included."""
        root = self.root.resolve()
        target = (root / path).resolve()
        if target != root and root not in target.parents:
            return None
        if len(target.relative_to(root).parts) > 2 or not is_run_dir(target):
            return None
        return self.root / target.relative_to(root)

    def relative(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.root)).as_posix()


def list_runs(root: str | Path, now: float | None = None) -> dict[str, Any]:
    """The run list of RUNS_DIR, read afresh."""
    return RunsReader(root).runs(now)


def run_detail(root: str | Path, path: str, now: float | None = None) -> dict[str, Any] | None:
    """One run's detail, read afresh; None when path is not a run inside root."""
    return RunsReader(root).detail(path, now)
