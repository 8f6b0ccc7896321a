"""A gossip run's bytes: what it measured, beside what its formulas say it should move.

Per gossip round every worker swaps its M mixed parameters (P unless a personal head stays
home) with each neighbour, degree x 2 x M x 4 bytes (compressed: the chain's formula in place
of M x 4); the measurements of the average model
and the consensus distance (distlab.strategies.consensus) come on top, after every round
and at every evaluation between rounds, and so do a personalized run's gathers of the
workers' accuracies and its label prior's allreduce (distlab.federated.personalization).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from distlab.strategies.consensus import measurement_bytes

if TYPE_CHECKING:
    from distlab.config import RunConfig
    from distlab.strategies.periodic import Plan


def comm_analysis(cfg: RunConfig, per_rank: dict, params: int, units: int) -> dict:
    """All traffic per worker per gossip round, mean over the workers. Its formula
    (bytes_per_round_analytic) is set beside it in the summary (traffic_summary): it needs
    the lead's events (the epoch length behind the measurements, the mixed parameter count),
    which the totals here do not hold."""
    if cfg.workers == 1:
        return {}  # one worker exchanges nothing: there is no traffic to set beside a formula
    workers = list(per_rank.values())
    measured = sum(w["bytes_sent"] + w["bytes_recv"] for w in workers) / len(workers)
    return {
        "bytes_per_round_measured": round(measured / units, 1),
        "bytes_per_round_scope": "per worker per round (mean over workers)",
    }


def traffic_summary(
    cfg: RunConfig, lead: list[dict], rounds: list[dict], deg: np.ndarray, plan: Plan
) -> dict:
    """Per gossip round, each measured figure beside its formula (M: the parameters mixed,
    P unless personal_head):
    - mix_bytes: the lead worker's exchange, its degree x 2 x M x 4;
    - measure_bytes: the lead worker's measuring allreduces (plan_traffic);
    - bytes (comm_analysis's, mean over workers): all traffic, the workers' mean degree x 2 x
      M x 4 plus the measurements and the rest of plan_traffic."""
    if cfg.workers == 1:
        return {}  # as comm_analysis: one worker exchanges nothing
    n, mixed = len(rounds), rounds[-1]["mixed_params"]
    per_peer = message_bytes(lead, mixed)
    measuring, other = plan_traffic(cfg, lead, plan, rounds[-1]["step"])
    measured = [e.get("measure_bytes") for e in rounds]
    lead_degree, mean_degree = float(deg[:, rounds[0]["rank"]].mean()), float(deg.mean())
    return {
        "mix_bytes_per_round_measured": round(float(np.mean([e["mix_bytes"] for e in rounds])), 1),
        "mix_bytes_per_round_analytic": round(lead_degree * 2 * per_peer, 1),
        # None for a run recorded before round events carried measure_bytes
        "measure_bytes_per_round_measured": (
            None if None in measured else round(sum(measured) / n, 1)
        ),
        "measure_bytes_per_round_analytic": round(measuring / n, 1),
        "bytes_per_round_analytic": round(mean_degree * 2 * per_peer + (measuring + other) / n, 1),
    }


def message_bytes(lead: list[dict], mixed: int) -> float:
    """What a worker sends each neighbour per round: its M mixed parameters (4 M), or,
    compressed (CHOCO-gossip), the chain's formula for one update."""
    event = next((e for e in lead if e.get("phase") == "compress"), None)
    return 4 * mixed if event is None else event["formula_bytes"]


def plan_traffic(cfg: RunConfig, lead: list[dict], plan: Plan, last_step: int) -> tuple[int, int]:
    """Bytes every worker counts up to step `last_step` besides the mixing: (measuring,
    other). Measuring: measurement_bytes(P) after each round, and at each evaluation between
    rounds. Other, personalized runs: 16 per evaluation (each worker's float64 accuracy
    gathered to the lead, 8 bytes sent by every worker and 8 x workers received by the lead)
    and, at each start of the run, label_prior's allreduce of the class frequencies (2 x
    classes x 8)."""
    params = next(e["params"] for e in lead if e.get("phase") == "start")
    kinds = [plan.kind(s) for s in range(1, last_step + 1)]
    measurements = kinds.count("average") + kinds.count("eval-average")
    other = sum(2 * e["classes"] * 8 for e in lead if e.get("phase") == "label_prior")
    if cfg.strategy.personalized:
        other += 16 * sum(plan.evaluates(s) for s in range(1, last_step + 1))
    return measurements * measurement_bytes(params), other
