"""Launchers, one module each: inline, spawn, external (see runtime/launch.py)."""
