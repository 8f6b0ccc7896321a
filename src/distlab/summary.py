"""summary.json: the numbers every run reports, derived from its events alone.

A figure that the events cannot support is null, never 0: a run that failed before its
first step has no samples per second, and a run without communication has no bytes.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

from distlab.config import RunConfig
from distlab.strategies import StrategySpec

# The rows of a run's table that every strategy shares: before the strategy's own rows
# (StrategySpec.summary_rows), then after them.
SHARED_ROWS: tuple[tuple[str, str], ...] = (
    ("status", "status"),
    ("strategy", "strategy"),
    ("dataset", "dataset"),
    ("model", "model"),
    ("params", "params"),
    ("workers", "workers"),
    ("processes", "processes"),
    ("seed", "seed"),
    ("final accuracy", "final_accuracy"),
    ("best accuracy", "best_accuracy"),
    ("final test loss", "final_loss"),
    ("steps", "steps"),
    ("rounds", "rounds"),
    ("wall seconds", "wall_seconds"),
    ("startup seconds", "startup_seconds"),
    ("train seconds", "train_seconds"),
    ("samples/s", "samples_per_second"),
    ("bytes/step measured", "bytes_per_step_measured"),
    ("bytes/step analytic", "bytes_per_step_analytic"),
    ("compressors", "compressors"),
    ("compression ratio", "compression_ratio"),
    ("simulated seconds", "sim_seconds"),
    ("epsilon", "epsilon"),
    ("attack success", "attack_success"),
)
LAST_ROWS: tuple[tuple[str, str], ...] = (("peak RSS MB", "peak_rss_mb"),)


def table_rows(spec: StrategySpec) -> list[tuple[str, str]]:
    """(label, summary key) for each row of a run's table, in order."""
    return [*SHARED_ROWS, *spec.summary_rows, *LAST_ROWS]


def summarize(
    cfg: RunConfig,
    spec: StrategySpec,
    events: list[dict[str, Any]],
    processes: int,
    wall: float,
    status: str,
    run_dir: Path | None = None,
) -> dict[str, Any]:
    lead_rank = spec.lead(cfg)
    lead = [e for e in events if e["rank"] == lead_rank]
    steps = [e for e in lead if e["kind"] == "step"]
    rounds = [e for e in lead if e["kind"] == "round"]
    evals = [e for e in lead if e["kind"] == "eval"]
    units = rounds or steps
    params = next((e["params"] for e in lead if e.get("phase") == "start"), None)
    summary: dict[str, Any] = {
        "status": status,
        "run_dir": str(run_dir) if run_dir is not None else None,
        "strategy": cfg.strategy.name,
        "dataset": cfg.dataset,
        "model": cfg.model,
        "params": params,
        "workers": cfg.workers,
        "processes": processes,
        "lead_rank": lead_rank,
        **hyperparameters(cfg),
        "batch_size_meaning": spec.batch_meaning(cfg),
        "final_accuracy": evals[-1]["accuracy"] if evals else None,
        "best_accuracy": max(e["accuracy"] for e in evals) if evals else None,
        "final_loss": evals[-1]["loss"] if evals else None,
        "final_train_loss": units[-1].get("loss") if units else None,
        "per_class_accuracy": evals[-1].get("per_class") if evals else None,
        "wall_seconds": round(wall, 3),
        "startup_seconds": startup_seconds(lead),
        "train_seconds": train_seconds(lead),
        # a step event is an optimizer update; an async server's dropped gradient is not
        "steps": sum(1 for e in steps if not e.get("dropped")),
        "rounds": len(rounds),
        # each time the run went on from a checkpoint (--resume, or a torchrun restart)
        "restarts": restarts(lead),
        "resumed_at": [e["at"] for e in lead if e.get("phase") == "resume"],
    }
    samples = sum(e.get("samples", 0) for e in units) if units else None
    summary["samples"] = samples
    summary["samples_per_second"] = _ratio(samples, summary["train_seconds"])
    rss = [e["peak_rss_mb"] for e in events if e.get("peak_rss_mb") is not None]
    summary["peak_rss_mb"] = max(rss) if rss else None
    summary.update(comm_summary(cfg, spec, events, params, len(units), processes))
    summary.update(compress_summary(lead))
    summary["sim_seconds"] = sim_seconds(lead)
    summary.update(threat_summary(cfg, lead, evals))
    summary["time_per_unit"] = time_per_unit(units, "round" if rounds else "step")
    summary.update(spec.extra_summary(cfg, lead))
    summary["environment"] = environment(events)
    summary["environment"].update(machine_figures(lead, events))
    return summary


def hyperparameters(cfg: RunConfig) -> dict[str, Any]:
    """The settings a reader of a results table asks for first."""
    return {
        "seed": cfg.seed,
        "sampler": cfg.sampler,
        "batch_size": cfg.batch_size,
        "epochs": cfg.epochs,
        "optimizer": cfg.optimizer.name,
        "lr": cfg.optimizer.lr,
        "partition": cfg.partition.scheme,
    }


def environment(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the numbers came from: results depend on the torch thread count (float
    summation order) and on the versions, so they are part of the record."""
    from importlib.metadata import version

    import numpy
    import torch

    starts = [e for e in events if e.get("phase") == "start"]
    threads = sorted({e["threads"] for e in starts if "threads" in e})
    return {
        "threads_per_process": threads[0] if len(threads) == 1 else threads or None,
        "cores": os.cpu_count(),
        "devices": sorted({e["device"] for e in starts if "device" in e}) or None,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "distlab": version("distlab"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def time_per_unit(units: list[dict[str, Any]], unit: str) -> dict[str, Any] | None:
    """The spread of the lead rank's step (or round) durations: median, 90th percentile and
    maximum in seconds. A median far below the p90 means something else took the CPU during
    some steps, and the run's time is not the paradigm's."""
    durations = sorted(e["duration"] for e in units if e.get("duration") is not None)
    if not durations:
        return None

    def at(q: float) -> float:
        return round(durations[min(len(durations) - 1, int(q * len(durations)))], 6)

    return {
        "unit": unit,
        "count": len(durations),
        "median": round(statistics.median(durations), 6),
        "p90": at(0.9),
        "max": round(durations[-1], 6),
    }


def machine_figures(lead: list[dict[str, Any]], events: list[dict[str, Any]]) -> dict[str, Any]:
    """The machine's load average when the lead rank started and ended, the cores other
    programs kept busy in between (the machine's busy CPU time less every rank's own), and
    the share of CPU time stolen by a hypervisor (null where the OS does not say)."""
    from distlab.runtime.environ import other_cores, steal_fraction

    first, last = rank_window(lead)
    figures: dict[str, Any] = {
        "load_start": (first or {}).get("machine", {}).get("load"),
        "load_end": (last or {}).get("machine", {}).get("load"),
        "other_cores": None,
        "steal_fraction": None,
    }
    if not (first and last and first.get("machine") and last.get("machine")):
        return figures
    own = 0.0
    for rank in {e["rank"] for e in events}:
        start, end = rank_window([e for e in events if e["rank"] == rank])
        if start and end and start.get("machine") and end.get("machine"):
            own += end["machine"]["own_cpu_seconds"] - start["machine"]["own_cpu_seconds"]
    wall = last["seconds"] - first["seconds"]
    figures["other_cores"] = other_cores(first["machine"], last["machine"], own, wall)
    figures["steal_fraction"] = steal_fraction(first["machine"], last["machine"])
    return figures


def rank_window(events: list[dict[str, Any]]) -> tuple[dict | None, dict | None]:
    """A rank's last start (or resume) event and its end event, from the same process."""
    starts = [e for e in events if e.get("phase") in ("start", "resume")]
    end = next((e for e in reversed(events) if e.get("phase") == "end"), None)
    return (starts[-1] if starts else None), end


def restarts(lead: list[dict[str, Any]]) -> int:
    """How often the run went on after its processes stopped: each resume from a checkpoint,
    and torchrun's restarts of a run that had no checkpoint yet (they start it over)."""
    resumes = sum(1 for e in lead if e.get("phase") == "resume")
    elastic = [e["elastic_restart"] for e in lead if e.get("elastic_restart")]
    return max([resumes, *elastic])


def startup_seconds(lead: list[dict[str, Any]]) -> float | None:
    """Seconds from the start of the run to the lead rank's first training step (process
    start, data loading, process-group rendezvous, model building)."""
    train = next((e["seconds"] for e in lead if e.get("phase") == "train"), None)
    return round(train, 4) if train is not None else None


def train_seconds(lead: list[dict[str, Any]]) -> float | None:
    """Seconds in the training loop, less the time the lead rank spent evaluating (the
    test-set evaluation is a measurement, not training)."""
    phases = {e["phase"]: e["seconds"] for e in lead if e["kind"] == "phase"}
    if "train" not in phases or "train_end" not in phases:
        return None
    evaluating = sum(e.get("duration", 0.0) for e in lead if e["kind"] == "eval")
    # a resumed run's clock goes on from its checkpoint: the restart is not training
    restarting = sum(
        e["seconds"] - e["checkpoint_seconds"] for e in lead if e.get("phase") == "resume"
    )
    return round(phases["train_end"] - phases["train"] - evaluating - restarting, 4)


def comm_summary(
    cfg: RunConfig,
    spec: StrategySpec,
    events: list[dict[str, Any]],
    params: int | None,
    units: int,
    processes: int,
) -> dict[str, Any]:
    """Per-rank totals, and the strategy's own measured-vs-analytic comparison (when the
    run got as far as one step and every rank reported its totals)."""
    totals = {e["rank"]: e for e in events if e["kind"] == "comm"}
    per_rank = {
        str(r): {k: e[k] for k in ("bytes_sent", "bytes_recv", "calls", "comm_seconds")}
        for r, e in sorted(totals.items())
    }
    out: dict[str, Any] = {"bytes_per_rank": per_rank or None}
    if units and params and len(per_rank) == processes:
        out.update(spec.comm_analysis(cfg, per_rank, params, units))
    return out


def compress_summary(lead: list[dict[str, Any]]) -> dict[str, Any]:
    """The lead's `compress` event as the summary gives it: the chain's names and how many
    times fewer bytes an update takes than dense float32 (dense_bytes / payload_bytes);
    both null when the run compressed nothing."""
    event = next((e for e in lead if e.get("phase") == "compress"), None)
    if event is None:
        return {"compressors": None, "compression_ratio": None}
    payload, dense = event.get("payload_bytes"), event.get("dense_bytes")
    ratio = round(dense / payload, 2) if payload and dense is not None else None
    return {"compressors": event.get("compressors"), "compression_ratio": ratio}


def threat_summary(cfg, lead: list[dict[str, Any]], evals: list[dict[str, Any]]) -> dict:
    """Privacy and attacks: epsilon at delta after the last event that carries one (null
    without differential privacy), the attacking clients or ranks (the `attack` phase
    event's) and the backdoor's success rate at the last evaluation (null without one)."""
    eps = [e["epsilon"] for e in lead if e.get("epsilon") is not None]
    attack = next((e for e in lead if e.get("phase") == "attack"), None)
    success = [e["attack_success"] for e in evals if e.get("attack_success") is not None]
    return {
        "privacy": cfg.privacy.mode,
        "epsilon": eps[-1] if eps else None,
        "delta": cfg.privacy.delta if cfg.privacy.mode != "none" else None,
        "attack": cfg.attack.kind,
        "attackers": None if attack is None else attack.get("attackers"),
        "attack_success": success[-1] if success else None,
    }


def sim_seconds(lead: list[dict[str, Any]]) -> float | None:
    """Simulated training seconds: the clock of the lead's last step or round event that
    carries one (clock.py); null when none does."""
    times = [
        e["sim_seconds"] for e in lead if e["kind"] in ("step", "round") and "sim_seconds" in e
    ]
    return times[-1] if times else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None
