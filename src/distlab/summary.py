"""summary.json: the numbers every run reports, derived from its events alone."""

from __future__ import annotations

from typing import Any

from distlab.config import RunConfig
from distlab.strategies import strategy_module


def summarize(
    cfg: RunConfig, events: list[dict[str, Any]], processes: int, wall: float, status: str
) -> dict[str, Any]:
    lead = [e for e in events if e["rank"] == 0]
    steps = [e for e in lead if e["kind"] == "step"]
    rounds = [e for e in lead if e["kind"] == "round"]
    evals = [e for e in lead if e["kind"] == "eval"]
    units = rounds or steps
    params = next((e["params"] for e in lead if e.get("phase") == "start"), 0)
    summary: dict[str, Any] = {
        "status": status,
        "strategy": cfg.strategy.name,
        "dataset": cfg.dataset,
        "model": cfg.model,
        "params": params,
        "workers": cfg.workers,
        "processes": processes,
        "sampler": cfg.sampler,
        "batch_size_meaning": batch_meaning(cfg),
        "final_accuracy": evals[-1]["accuracy"] if evals else None,
        "best_accuracy": max(e["accuracy"] for e in evals) if evals else None,
        "final_loss": evals[-1]["loss"] if evals else None,
        "final_train_loss": units[-1].get("loss") if units else None,
        "per_class_accuracy": evals[-1].get("per_class") if evals else None,
        "wall_seconds": round(wall, 3),
        "train_seconds": train_seconds(lead),
        "steps": len(steps),
        "rounds": len(rounds),
    }
    samples = sum(e.get("samples", 0) for e in units)
    summary["samples"] = samples
    summary["samples_per_second"] = _ratio(samples, summary["train_seconds"])
    summary["peak_rss_mb"] = max((e.get("peak_rss_mb", 0) for e in events), default=None)
    summary.update(comm_summary(cfg, events, params, len(units)))
    return summary


def batch_meaning(cfg: RunConfig) -> str:
    module = strategy_module(cfg.strategy.name)
    if hasattr(module, "batch_meaning"):
        return module.batch_meaning(cfg)
    if cfg.sampler == "split-batch":
        return "global (split across workers)"
    return "per worker"


def train_seconds(lead: list[dict[str, Any]]) -> float | None:
    """Seconds in the training loop, less the time the lead rank spent evaluating (the
    test-set evaluation is a measurement, not training)."""
    phases = {e["phase"]: e["seconds"] for e in lead if e["kind"] == "phase"}
    if "train" not in phases or "train_end" not in phases:
        return None
    evaluating = sum(e.get("duration", 0.0) for e in lead if e["kind"] == "eval")
    return round(phases["train_end"] - phases["train"] - evaluating, 4)


def comm_summary(
    cfg: RunConfig, events: list[dict[str, Any]], params: int, units: int
) -> dict[str, Any]:
    """Per-rank totals, and the strategy's own measured-vs-analytic comparison."""
    totals = {e["rank"]: e for e in events if e["kind"] == "comm"}
    per_rank = {
        str(r): {k: e[k] for k in ("bytes_sent", "bytes_recv", "calls", "comm_seconds")}
        for r, e in sorted(totals.items())
    }
    out: dict[str, Any] = {"bytes_per_rank": per_rank}
    module = strategy_module(cfg.strategy.name)
    if hasattr(module, "comm_analysis") and units:
        out.update(module.comm_analysis(cfg, per_rank, params, units))
    return out


def _ratio(a: float, b: float | None) -> float | None:
    return round(a / b, 2) if b else None
