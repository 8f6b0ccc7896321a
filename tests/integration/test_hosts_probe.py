"""The what-if calibrated on a measured link: on two simulated hosts joined by a link shaped
to 100 Mbit/s, `distlab probe-network` under torchrun fits the link, and the what-if priced
with that file predicts the 2-host allreduce step time within 10% of the measured one."""

from __future__ import annotations

import json
import sys

import pytest
from tests.hosts import HOST_DIR, distlab_torchrun, wait_all

from distlab.experiments.whatif import parse_networks, predict

pytestmark = pytest.mark.slow

RATE = "100mbit"
RUN = ("run", "--strategy", "allreduce", "--workers", "2", "--model", "lenet",
       "--dataset", "mnist-sample", "--epochs", "1", "--batch-size", "64",
       "--set", "timeout=60")  # fmt: skip


def on_both(hosts, args: tuple[str, ...], port: int, timeout: float = 90) -> list[tuple]:
    """Run `distlab ARGS` under torchrun, one rank on each host; each host's outcome."""
    procs = [
        host.popen(distlab_torchrun(2, rank, 1, hosts[0].addr, *args, port=port))
        for rank, host in enumerate(hosts)
    ]
    got = wait_all(procs, timeout)
    assert all(code == 0 for code, _, _ in got), [err[-800:] for _, _, err in got]
    return got


def step_seconds(summary: dict) -> float:
    return summary["train_seconds"] / summary["steps"]


def test_the_calibrated_what_if_predicts_a_shaped_link_within_10_percent(two_hosts):
    a, b = two_hosts
    for host in two_hosts:
        host.shape(RATE)
    # each host sees its own HOST_DIR: the lead writes the link file and the runs on hosta
    on_both(two_hosts, ("probe-network", "--out", f"{HOST_DIR}/link.json", "--link-rate", RATE),
            29611)  # fmt: skip
    link = a.home / "link.json"
    fit = json.loads(link.read_text())
    assert fit["communicator"] == "TorchCommunicator" and fit["world"] == 2
    # the payload rate is about the link's nominal one, less headers and protocol
    assert 0.9 < fit["wire_per_payload"] < 1.3

    on_both(two_hosts, (*RUN, "--out-dir", f"{HOST_DIR}/runs", "--name", "hosts"), 29612)
    # the compute the what-if starts from: the same job on one host (shared memory)
    argv = [sys.executable, "-m", "distlab", *RUN, "--set", "threads=1", "--name", "local"]
    local = a.run([*argv, "--out-dir", f"{HOST_DIR}/runs", "-q"], timeout=90)
    assert local.returncode == 0, local.stderr[-800:]

    runs = a.home / "runs"
    measured = step_seconds(json.loads((runs / "hosts" / "summary.json").read_text()))
    summary = json.loads((runs / "local" / "summary.json").read_text())
    rows, reason = predict(summary, parse_networks(str(link)), 50e-6, workers=[2])
    assert reason is None and rows[0]["network"] == "link.json"
    predicted = rows[0]["unit_seconds"]
    assert abs(predicted - measured) / measured < 0.10, (predicted, measured, fit)
