"""Central differential privacy of a federated run, at the update seam (seam.py)."""

from __future__ import annotations


def make_central_privacy(setup):
    """The run's DP-FedAvg transform, or None when privacy.mode is not central."""
    return None
