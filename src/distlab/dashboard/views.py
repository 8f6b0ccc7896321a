"""What the dashboard shows of one run, derived from its events alone (and its summary's
figures): progress, curves, the federated clients and rounds, each rank's step times and
traffic. Pure functions of event lists; reading the files is runs.py's work. A figure the
events cannot support is None, never 0.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from distlab.runs.events import Event, is_number, rank_of

MAX_POINTS = 2000  # a curve sent to the browser keeps at most this many points
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


# --- the run list ------------------------------------------------------------------------


def describe(config: dict[str, Any]) -> dict[str, Any]:
    """The settings the run list shows, from the run's config."""
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


def leadrank_of(events: list[Event], summary: dict[str, Any] | None = None) -> int:
    """The rank whose events are the record (the start phase says it, as the summary does)."""
    if summary and isinstance(summary.get("lead_rank"), int):
        return summary["lead_rank"]
    start = next((e for e in events if e.get("phase") == "start" and "lead_rank" in e), None)
    return int(start["lead_rank"]) if start is not None else 0


def lead_events(events: list[Event], summary: dict[str, Any] | None = None) -> list[Event]:
    rank = leadrank_of(events, summary)
    return [e for e in events if rank_of(e) == rank]


def progress(lead: list[Event]) -> dict[str, Any]:
    """Rounds and steps done, the planned total, the latest and best test accuracy."""
    rounds = [e for e in lead if e.get("kind") == "round"]
    steps = [e for e in lead if e.get("kind") == "step" and not e.get("dropped")]
    accuracies = [
        e["accuracy"] for e in lead if e.get("kind") == "eval" and is_number(e.get("accuracy"))
    ]
    train = next((e for e in reversed(lead) if e.get("phase") == "train"), {})
    return {
        "rounds": len(rounds),
        "steps": len(steps),
        "unit": train.get("unit") or ("round" if rounds else "step"),
        "total": train.get("total"),
        "accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
        "seconds": next(
            (e["seconds"] for e in reversed(lead) if is_number(e.get("seconds"))), None
        ),
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
    times = [e["train_seconds"] for e in trained if is_number(e.get("train_seconds"))]
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
        "transfer": rest if is_number(duration) and training is not None else None,
        # without client reports the clients' training and the transfer are one figure
        "unsplit": rest if is_number(duration) and training is None else None,
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
        if (values := [e["val_accuracy"] for e in per_round[r] if is_number(e.get("val_accuracy"))])
    ]
    return {
        "clients": clients,
        "refused": refused,
        "rounds": [round_row(e, per_round.get(e.get("round"), [])) for e in rounds],
        "train_seconds": [e["train_seconds"] for e in trained if is_number(e.get("train_seconds"))],
        "val_accuracy": validation,
    }


def rank_view(events: list[Event]) -> list[dict[str, Any]] | None:
    """Per rank: step times (a thinned series, mean, median) and bytes sent and received
    (the rank's final totals, or the sum over its steps while it runs); None without steps."""
    steps: dict[int, list[Event]] = {}
    totals: dict[int, Event] = {}
    roles: dict[int, str] = {}
    for event in events:
        rank = rank_of(event)
        roles.setdefault(rank, event.get("role"))
        if event.get("kind") == "step" and is_number(event.get("duration")):
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
        counted = [e[key] for e in steps if is_number(e.get(key))]
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


def _order(value: Any) -> tuple[int, Any]:
    """Sort client ids that are numbers numerically, anything else after them as text."""
    return (0, value) if is_number(value) else (1, str(value))
