"""The bytes of a logits exchange beside their formula: distillation moves logits, not models
(members to the lead every target step, and with mutual learning the target's back). The
formula needs the class count and the target's steps, which the lead's events hold and the
run's totals do not, so the figures come from the lead's step events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distlab.config import RunConfig


def no_comm_analysis(cfg: RunConfig, per_rank: dict, params: int, units: int) -> dict:
    """The logits traffic is set beside its formula in the summary (logits_traffic): the
    formula needs the class count and the target's steps, which the totals do not hold."""
    return {}


def logits_traffic(cfg: RunConfig, lead: list[dict], classes: int | None) -> dict:
    """Per target step, the lead's measured logits bytes beside the formula: in, every
    member's logits (members x batch x classes x 4, the lead's own block included as the
    Communicator counts a gather); out (bidirectional), the target's logits broadcast
    (batch x classes x 4, counted once at the source)."""
    steps = [e for e in lead if e["kind"] == "step" and e.get("stage") == "target"]
    if not steps or classes is None:
        return {}
    n, samples = len(steps), sum(e["samples"] for e in steps)
    out = {
        "logits_bytes_in_per_step_measured": round(
            sum(e.get("logits_bytes_in", 0) for e in steps) / n, 1
        ),
        "logits_bytes_in_per_step_analytic": round(cfg.workers * samples * classes * 4 / n, 1),
        "logits_bytes_out_per_step_measured": None,
        "logits_bytes_out_per_step_analytic": None,
    }
    if cfg.strategy.bidirectional:
        measured = sum(e.get("logits_bytes_out", 0) for e in steps) / n
        out["logits_bytes_out_per_step_measured"] = round(measured, 1)
        out["logits_bytes_out_per_step_analytic"] = round(samples * classes * 4 / n, 1)
    return out
