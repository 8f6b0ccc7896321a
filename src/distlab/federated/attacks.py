"""Attacking clients of a federated run, at the update seam (seam.py)."""

from __future__ import annotations


def make_attack(setup):
    """The run's attack transform, or None when attack.kind is none."""
    return None
