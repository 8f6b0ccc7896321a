"""Read a folder of run directories into the dashboard's JSON: the run list and one run's
detail, following the event files of live runs as they grow.

A run directory has config.json; it is finished once summary.json exists, and then its merged
events.jsonl is read instead of events/rank-R.jsonl. RUNS_DIR holds run directories and, one
level down, the run directories of sweeps (sweep.json) or other folders. A figure the events
cannot support is None, never 0. Nothing here imports torch or a web framework.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

STALE_SECONDS = 600.0  # a run without summary.json whose files stood still this long is dead
MAX_POINTS = 2000  # a curve sent to the browser keeps at most this many points
# A view of a long run costs time to rebuild: one that took over SLOW_BUILD seconds is rebuilt
# no sooner than REBUILD_FACTOR times that after, so following a run of any length spends at
# most a tenth of a core; a short run's view is rebuilt on every change.
SLOW_BUILD = 0.05
REBUILD_FACTOR = 10.0
SUMMARY_FIGURES = (
    "wall_seconds",
    "startup_seconds",
    "train_seconds",
    "samples_per_second",
    "final_accuracy",
    "best_accuracy",
    "final_loss",
    "peak_rss_mb",
    "processes",
    "params",
)

Event = dict[str, Any]


# --- finding runs ------------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def subdirs(path: Path) -> list[Path]:
    """Visible subdirectories, sorted; none when the folder cannot be read."""
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def find_run_dirs(root: Path) -> list[tuple[Path, str | None]]:
    """Run directories under root with the relative path of the folder holding them (a
    sweep's, or None at the top): root itself when it is a run, else its run directories and
    those one level further down."""
    if is_run_dir(root):
        return [(root, None)]
    found: list[tuple[Path, str | None]] = []
    for child in subdirs(root):
        if is_run_dir(child):
            found.append((child, None))
            continue
        group = child.relative_to(root).as_posix()
        found += [(inner, group) for inner in subdirs(child) if is_run_dir(inner)]
    return found


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object, or None when the file is missing, half copied or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_sweeps(root: Path) -> list[dict[str, Any]]:
    """Each sweep folder under root: its name, cell count and cells per status."""
    sweeps = []
    for child in subdirs(root):
        record = read_json(child / "sweep.json")
        if record is None:
            continue
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


# --- following event files ---------------------------------------------------------------


def parse_lines(data: bytes) -> list[Event]:
    """The JSON objects of complete JSONL lines; a line that does not parse is skipped."""
    events = []
    for line in data.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


class JsonlFile:
    """Follows one JSONL file: a read parses only the bytes appended since the last one, and
    a last line still without its newline waits for the next read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[Event] = []
        self.mtime: float | None = None
        self._offset = 0
        self._identity: tuple[int, int] | None = None

    def read(self) -> bool:
        """Take in what was appended; True when the events changed."""
        try:
            stat = self.path.stat()
        except OSError:
            changed = bool(self.events)
            self._reset(None)
            return changed
        self.mtime = stat.st_mtime
        identity = (stat.st_dev, stat.st_ino)
        replaced = identity != self._identity or stat.st_size < self._offset
        if replaced:
            self._reset(identity)
        if stat.st_size == self._offset:
            return replaced
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read(stat.st_size - self._offset)
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        new = parse_lines(complete)
        self.events.extend(new)
        return replaced or bool(new)

    def started(self) -> float | None:
        """When the run started, by the clock: the file was last written about when its
        last event happened, and an event's `seconds` count from the start."""
        last = next(
            (e["seconds"] for e in reversed(self.events) if _number(e.get("seconds"))), None
        )
        return self.mtime - last if self.mtime is not None and last is not None else None

    def _reset(self, identity: tuple[int, int] | None) -> None:
        self.events, self._offset, self._identity = [], 0, identity


def merge(per_file: list[list[Event]]) -> list[Event]:
    """Every file's events in one list ordered by time then rank (one file: as written)."""
    if len(per_file) == 1:
        return per_file[0]
    merged = [e for events in per_file for e in events]
    merged.sort(key=lambda e: (_seconds(e), _rank(e)))
    return merged


class RunState:
    """What the dashboard holds of one run directory; each file is read again only when it
    changed, and the derived detail is rebuilt only when the events changed."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.files: dict[str, JsonlFile] = {}
        self.version = 0
        self._json: dict[str, tuple[tuple[int, int], dict[str, Any] | None]] = {}
        self._events: list[Event] | None = None
        self._views: dict[str, tuple[int, float, float, Any]] = {}

    def json_file(self, name: str) -> dict[str, Any] | None:
        path = self.run_dir / name
        try:
            stat = path.stat()
        except OSError:
            self._json.pop(name, None)
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if name not in self._json or self._json[name][0] != stamp:
            self._json[name] = (stamp, read_json(path))
        return self._json[name][1]

    def event_paths(self) -> list[Path]:
        """events.jsonl once the run is finished, else every rank's file."""
        merged = self.run_dir / "events.jsonl"
        if (self.run_dir / "summary.json").is_file() and merged.is_file():
            return [merged]
        ranks = (self.run_dir / "events").glob("rank-*.jsonl")
        return sorted(ranks, key=lambda p: (len(p.name), p.name))

    def events(self) -> list[Event]:
        """Every event read so far, ordered by time then rank."""
        paths = self.event_paths()
        if [f.path for f in self.files.values()] != paths:
            self.files = {p.name: self.files.get(p.name) or JsonlFile(p) for p in paths}
            self._events = None
        changed = [f.read() for f in self.files.values()]
        if any(changed) or self._events is None:
            self.version += 1
            self._events = merge([f.events for f in self.files.values()])
        return self._events

    def updated(self) -> float | None:
        """The last time any of the run's files changed."""
        paths = [self.run_dir / "config.json", self.run_dir / "summary.json", *self.event_paths()]
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
        if _number(wall):
            try:
                return (self.run_dir / "summary.json").stat().st_mtime - wall
            except OSError:
                pass
        starts = [s for f in self.files.values() if (s := f.started()) is not None]
        if starts:
            return min(starts)
        try:
            return (self.run_dir / "config.json").stat().st_mtime
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


def describe(config: dict[str, Any]) -> dict[str, Any]:
    """The settings the run list shows, from config.json."""
    strategy = config.get("strategy")
    strategy = strategy if isinstance(strategy, dict) else {"name": strategy}
    return {
        "strategy": strategy.get("name"),
        "dataset": config.get("dataset"),
        "model": config.get("model"),
        "workers": config.get("workers"),
        "clients": strategy.get("clients"),
        "planned_rounds": strategy.get("rounds"),
        "epochs": config.get("epochs"),
    }


def lead_rank(events: list[Event], summary: dict[str, Any] | None = None) -> int:
    """The rank whose events are the record (the start phase says it, as the summary does)."""
    if summary and isinstance(summary.get("lead_rank"), int):
        return summary["lead_rank"]
    start = next((e for e in events if e.get("phase") == "start" and "lead_rank" in e), None)
    return int(start["lead_rank"]) if start is not None else 0


def lead_events(events: list[Event], summary: dict[str, Any] | None = None) -> list[Event]:
    rank = lead_rank(events, summary)
    return [e for e in events if _rank(e) == rank]


def progress(lead: list[Event]) -> dict[str, Any]:
    """Rounds and steps done, the planned total, the latest and best test accuracy."""
    rounds = [e for e in lead if e.get("kind") == "round"]
    steps = [e for e in lead if e.get("kind") == "step" and not e.get("dropped")]
    accuracies = [
        e["accuracy"] for e in lead if e.get("kind") == "eval" and _number(e.get("accuracy"))
    ]
    train = next((e for e in reversed(lead) if e.get("phase") == "train"), {})
    return {
        "rounds": len(rounds),
        "steps": len(steps),
        "unit": train.get("unit") or ("round" if rounds else "step"),
        "total": train.get("total"),
        "accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
        "seconds": next((e["seconds"] for e in reversed(lead) if _number(e.get("seconds"))), None),
    }


def summary_progress(summary: dict[str, Any]) -> dict[str, Any]:
    """The same figures for a finished run, from its summary alone."""
    rounds, steps = summary.get("rounds"), summary.get("steps")
    return {
        "rounds": rounds,
        "steps": steps,
        "unit": "round" if rounds else "step",
        "total": None,
        "accuracy": summary.get("final_accuracy"),
        "best_accuracy": summary.get("best_accuracy"),
        "seconds": summary.get("wall_seconds"),
    }


def run_row(state: RunState, path: str, group: str | None, now: float) -> dict[str, Any]:
    """One line of the run list; a finished run is read from its summary alone."""
    config = state.json_file("config.json") or {}
    summary = state.json_file("summary.json")
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


# --- one run's detail --------------------------------------------------------------------


def thin(n: int, limit: int = MAX_POINTS) -> list[int]:
    """Indices of at most about `limit` evenly spaced points out of n, the last one kept.

    >>> thin(5, 2)
    [0, 3, 4]
    """
    stride = max(1, math.ceil(n / limit))
    keep = list(range(0, n, stride))
    if n and keep[-1] != n - 1:
        keep.append(n - 1)
    return keep


def curves(lead: list[Event]) -> dict[str, Any]:
    """Training loss per round (or per step) and the test loss and accuracy of each eval."""
    rounds = [e for e in lead if e.get("kind") == "round"]
    steps = [e for e in lead if e.get("kind") == "step" and not e.get("dropped")]
    unit = "round" if rounds else "step"
    units = rounds or steps
    keep = thin(len(units))
    evals = [e for e in lead if e.get("kind") == "eval"]
    eval_unit = next((k for k in ("round", "step", "epoch") if evals and k in evals[0]), None)
    return {
        "unit": unit,
        "train": {
            "x": [units[i].get(unit) for i in keep],
            "loss": [units[i].get("loss") for i in keep],
        },
        "eval": {
            "unit": eval_unit,
            "x": [e.get(eval_unit) if eval_unit else i + 1 for i, e in enumerate(evals)],
            "loss": [e.get("loss") for e in evals],
            "accuracy": [e.get("accuracy") for e in evals],
        },
    }


def rejected_reasons(event: Event, lost: dict[str, str]) -> dict[str, str | None]:
    """A round's rejected clients as {client: reason}: the event holds a list of ids (or
    already a mapping); a lost client's reason comes from its client event."""
    rejected = event.get("rejected") or []
    if isinstance(rejected, dict):
        return {str(c): (str(w) if w is not None else None) for c, w in rejected.items()}
    return {str(c): lost.get(str(c)) for c in rejected}


def round_row(event: Event, reports: list[Event]) -> dict[str, Any]:
    """One round: its clients, and its time split into the slowest client's training, the
    rest (transfer and waiting, never negative) and the server's aggregation."""
    trained = [e for e in reports if e.get("status") == "trained"]
    lost = {str(e.get("client")): e.get("reason") for e in reports if e.get("status") == "lost"}
    times = [e["train_seconds"] for e in trained if _number(e.get("train_seconds"))]
    training = max(times) if times else None
    duration, aggregation = event.get("duration"), event.get("aggregate_seconds")
    rest = round(max(0.0, (duration or 0.0) - (training or 0.0) - (aggregation or 0.0)), 6)
    return {
        "round": event.get("round"),
        "seconds": event.get("seconds"),
        "loss": event.get("loss"),
        "samples": event.get("samples"),
        "duration": duration,
        "training": training,
        "transfer": rest if _number(duration) and training is not None else None,
        # without client reports the clients' training and the transfer are one figure
        "unsplit": rest if _number(duration) and training is None else None,
        "aggregation": aggregation,
        "sampled": list(event.get("clients") or []),
        "failed": list(event.get("failed") or []),
        "rejected": rejected_reasons(event, lost),
        "trained": [e.get("client") for e in trained],
        "lost": lost,
        "attempts": event.get("attempts"),
        "bytes_sent": event.get("bytes_sent"),
        "bytes_recv": event.get("bytes_recv"),
    }


def new_client(client: Any) -> dict[str, Any]:
    return {
        "client": client,
        "node": None,
        "address": None,
        "status": None,
        "last_seen": None,
        "rounds": 0,
        "loss": None,
        "val_accuracy": None,
        "train_seconds": None,
        "samples": None,
        "reason": None,
        "reported": False,  # whether the client has events of its own (deployed runs)
    }


def take_client_event(row: dict[str, Any], event: Event) -> None:
    """A deployed client's own event: it connected, trained or was lost."""
    row["reported"] = True
    if event.get("node") is not None:
        row["node"] = str(event["node"])  # node ids exceed 2**53: JavaScript numbers lose them
    if event.get("address"):
        row["address"] = str(event["address"])
    row["status"] = event.get("status")
    row["reason"] = event.get("reason")
    if event.get("status") in ("connected", "trained"):
        row["last_seen"] = event.get("seconds")
    if event.get("status") == "trained":
        for key in ("loss", "val_accuracy", "train_seconds", "samples"):
            row[key] = event.get(key)


def take_round_event(clients: dict[Any, dict[str, Any]], event: Event) -> None:
    """A round's outcome for each sampled client: aggregated, failed or rejected."""
    failed = set(event.get("failed") or [])
    rejected = rejected_reasons(event, {})
    for client in event.get("clients") or []:
        row = clients.setdefault(client, new_client(client))
        if client in failed:
            if row["status"] != "lost":  # a lost client's own event already says why
                row["status"] = "failed"
        elif str(client) in rejected:
            if row["status"] != "lost":  # a lost client's own event already says why
                row["status"], row["reason"] = "rejected", rejected[str(client)]
        else:
            row["rounds"] += 1
            if not row["reported"]:
                row["status"], row["last_seen"] = "trained", event.get("seconds")


def client_table(events: list[Event]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The clients (id, node, address, status, last seen, rounds aggregated, last figures)
    and the nodes refused, from client events where the run has them and round events."""
    clients: dict[Any, dict[str, Any]] = {}
    refused = []
    for event in events:
        if event.get("kind") == "round":
            take_round_event(clients, event)
        elif event.get("kind") == "client" and event.get("status") == "refused":
            node = event.get("node")
            refused.append(
                {
                    "client": event.get("client"),
                    "node": str(node) if node is not None else None,
                    "reason": event.get("reason"),
                    "seconds": event.get("seconds"),
                }
            )
        elif event.get("kind") == "client" and event.get("client") is not None:
            take_client_event(
                clients.setdefault(event["client"], new_client(event["client"])), event
            )
    rows = [clients[c] for c in sorted(clients, key=_order)]
    for row in rows:
        del row["reported"]
    return rows, refused


def federated_view(events: list[Event], lead: list[Event]) -> dict[str, Any] | None:
    """Clients, rounds, client training times and per-round validation accuracies; None
    for a run without federated rounds."""
    reports = [e for e in events if e.get("kind") == "client"]
    rounds = [e for e in lead if e.get("kind") == "round"]
    if not reports and not any("clients" in e for e in rounds):
        return None
    per_round: dict[Any, list[Event]] = {}
    for event in reports:
        if event.get("round") is not None:
            per_round.setdefault(event["round"], []).append(event)
    trained = [e for e in reports if e.get("status") == "trained"]
    clients, refused = client_table([e for e in events if e.get("kind") in ("round", "client")])
    validation = [
        {"round": r, "values": values}
        for r in sorted(per_round, key=_order)
        if (values := [e["val_accuracy"] for e in per_round[r] if _number(e.get("val_accuracy"))])
    ]
    return {
        "clients": clients,
        "refused": refused,
        "rounds": [round_row(e, per_round.get(e.get("round"), [])) for e in rounds],
        "train_seconds": [e["train_seconds"] for e in trained if _number(e.get("train_seconds"))],
        "val_accuracy": validation,
    }


def rank_view(events: list[Event]) -> list[dict[str, Any]] | None:
    """Per rank: step times (a thinned series, mean, median) and bytes sent and received
    (the rank's final totals, or the sum over its steps while it runs); None without steps."""
    steps: dict[int, list[Event]] = {}
    totals: dict[int, Event] = {}
    roles: dict[int, str] = {}
    for event in events:
        rank = _rank(event)
        roles.setdefault(rank, event.get("role"))
        if event.get("kind") == "step" and _number(event.get("duration")):
            steps.setdefault(rank, []).append(event)
        elif event.get("kind") == "comm":
            totals[rank] = event
    if not steps:
        return None
    return [
        rank_row(r, roles.get(r), steps.get(r, []), totals.get(r))
        for r in sorted(set(steps) | set(totals))
    ]


def rank_row(rank: int, role: Any, steps: list[Event], total: Event | None) -> dict[str, Any]:
    durations = [e["duration"] for e in steps]
    keep = thin(len(steps))
    row = {
        "rank": rank,
        "role": role,
        "steps": len(steps),
        "step_mean": statistics.fmean(durations) if durations else None,
        "step_median": statistics.median(durations) if durations else None,
        "step": [steps[i].get("step") for i in keep],
        "duration": [durations[i] for i in keep],
        "comm_seconds": total.get("comm_seconds") if total else None,
        "final": total is not None,
    }
    for key in ("bytes_sent", "bytes_recv"):
        counted = [e[key] for e in steps if _number(e.get(key))]
        row[key] = total.get(key) if total else (sum(counted) if counted else None)
    return row


def build_detail(events: list[Event], summary: dict[str, Any] | None) -> dict[str, Any]:
    """Everything the run page draws, from the events alone (plus the summary's figures)."""
    lead = lead_events(events, summary)
    figures = {k: summary.get(k) for k in SUMMARY_FIGURES} if summary else {}
    done = progress(lead)
    if summary is not None:  # the plan only while it runs: async workers finish short of it
        done["total"] = None
    return {
        "progress": done,
        "curves": curves(lead),
        "federated": federated_view(events, lead),
        "ranks": rank_view(events),
        "summary": figures,
        "events": len(events),
    }


def run_detail_of(state: RunState, path: str, group: str | None, now: float) -> dict[str, Any]:
    row = run_row(state, path, group, now)
    summary = state.json_file("summary.json")
    detail = state.view("detail", lambda events: build_detail(events, summary))
    return {**row, **detail, "config": state.json_file("config.json"), "now": now}


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
            found = {self.relative(d): (d, group) for d, group in find_run_dirs(self.root)}
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


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _seconds(event: Event) -> float:
    value = event.get("seconds")
    return value if _number(value) else 0.0


def _rank(event: Event) -> int:
    value = event.get("rank")
    return value if isinstance(value, int) else 0


def _order(value: Any) -> tuple[int, Any]:
    """Sort client ids that are numbers numerically, anything else after them as text."""
    return (0, value) if _number(value) else (1, str(value))
