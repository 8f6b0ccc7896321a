"""Shared test helpers: small real runs through the public API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from distlab.api import run
from distlab.config import validate_config

# CI runs the same property examples every time (a red CI lands nothing); a developer's run
# keeps exploring new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]


def make_config(tmp_path: Path, **fields):
    """A small, fast config: synthetic data, an MLP, one epoch, CPU."""
    base = {
        "dataset": "synthetic",
        "model": "mlp",
        "epochs": 1,
        "batch_size": 32,
        "out_dir": str(tmp_path / "runs"),
        "timeout": 60,
    }
    base.update(fields)
    return validate_config(base)


def run_small(tmp_path: Path, **fields):
    return run(make_config(tmp_path, **fields))


def step_losses(result) -> list[float]:
    return [e["loss"] for e in result.events if e["kind"] == "step" and e["rank"] == 0]


def final_state(result) -> dict[str, torch.Tensor]:
    return torch.load(result.run_dir / "model.pt", weights_only=True)


def cli(*args: str, cwd: Path | None = None, timeout: float = 120, env=None):
    """Run `python -m distlab ARGS` in a subprocess and return the CompletedProcess."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "distlab", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def assert_no_orphans(pids: list[int], grace: float = 10.0) -> None:
    """None of `pids` is still running `grace` seconds on (a zombie awaiting its parent's
    wait has ended): a stopped rank may take a moment to record its end on a busy machine,
    but none may linger."""
    import psutil

    def running(p: int) -> bool:
        try:
            return psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + grace
    alive = [p for p in pids if running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if running(p)]
    assert not alive, f"processes left behind: {alive}"


@pytest.fixture
def saved_figures(monkeypatch) -> list:
    """Every matplotlib figure saved during the test, as it was saved."""
    from matplotlib.figure import Figure

    figures, savefig = [], Figure.savefig

    def save(self, *args, **kwargs):
        figures.append(self)
        return savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", save)
    return figures


@pytest.fixture
def small_config(tmp_path):
    return lambda **fields: make_config(tmp_path, **fields)


def headless_chromium(window: str = "1400,1000", console_log: bool = False):
    """Debian's chromium driven by its chromedriver, headless; skips the test, naming the
    packages, where they are missing."""
    import shutil

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("needs a headless browser: install Debian's chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={window}"):  # fmt: skip
        options.add_argument(flag)
    if console_log:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture
def two_hosts():
    """Two simulated hosts (tests/hosts.py), hosta 10.77.0.1 and hostb 10.77.0.2; skips,
    naming what is missing, where the bed cannot be built (not root, no iproute2)."""
    from tests.hosts import host_bed, missing

    reason = missing()
    if reason:
        pytest.skip(reason)
    with host_bed(2) as hosts:
        yield hosts


def wait_for_line(proc: subprocess.Popen, text: str, seconds: float) -> str:
    """Read proc's stdout until a line contains `text`."""
    deadline = time.monotonic() + seconds
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"no line with {text!r}: {''.join(seen)[-2000:]}")
