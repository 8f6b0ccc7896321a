"""Secure aggregation of a federated run, at the update seam (seam.py)."""

from __future__ import annotations


def make_secagg(setup):
    """The run's SecAgg+ transform, or None when secagg.enabled is false."""
    return None
