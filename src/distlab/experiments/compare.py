"""`distlab compare`: one config under several strategies, as a sweep whose report
compares them against one baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# What compare runs unless --strategies says otherwise: seed 000's homework.
COMPARE_CELLS = [
    {"strategy": "centralized", "workers": 1},
    {"strategy": "allreduce"},
    {"strategy": "param-server"},
    {"strategy": "fedavg", "partition": "iid"},
    {"strategy": "fedavg", "partition": "dirichlet", "alpha": 0.1},
]

# A strategy needs peers to compare: the base config's workers unless it sets them.
COMPARE_WORKERS = 2


def compare_cells(strategies: str | None, baseline: str) -> list[dict[str, Any]]:
    """The cells of comma-separated `strategies` (COMPARE_CELLS for None), the baseline
    first as one process: the T(1) of every speedup."""
    if strategies is None:
        return COMPARE_CELLS
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    if not names:
        raise ValueError("--strategies has no names (e.g. --strategies allreduce,fedavg)")
    cells = [{"strategy": baseline, "workers": 1}]
    return cells + [{"strategy": n} for n in names if n != baseline]


def check_report_inputs(
    target: float | None, baseline: str, report_dir: Path, network: str | None, latency: str
) -> None:
    """Refuse a report's bad input before any cell runs."""
    from distlab.experiments.report import (
        check_baseline,
        check_network,
        check_out_dir,
        check_target,
    )
    from distlab.experiments.whatif import parse_latency

    check_target(target)
    check_baseline(baseline)
    check_out_dir(report_dir)
    parse_latency(latency)  # refused even where no --network uses it
    if network is not None:
        check_network(network, latency)


def compare_spec(cells: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    """The sweep spec of a comparison: its cells, in the sweep's own key names."""
    from distlab.experiments.sweep import canonical_key

    spec = {"cells": [{canonical_key(k, "cells"): v for k, v in c.items()} for c in cells]}
    spec["repeats"] = repeats
    return spec


def compare_base(base: dict[str, Any]) -> dict[str, Any]:
    """The base config of a comparison: COMPARE_WORKERS unless it sets workers."""
    base.setdefault("workers", COMPARE_WORKERS)
    return base
