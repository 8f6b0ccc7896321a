"""Links measured by `distlab probe-network`: the least-squares fits against values worked by
hand, the link file read back as a network of the what-if, and its one-line errors."""

from __future__ import annotations

import json

import pytest

from distlab.experiments.whatif import parse_networks, predict, ring_allreduce_seconds
from distlab.experiments.whatif_link import LINK_FORMAT, fit_line, fit_link

SIZES = [4**k for k in range(1, 10)]
ALPHA, BETA = 40e-6, 8e-8  # 40 us, 12.5 MB/s (100 Mbit/s)


def summary():
    """A completed allreduce run: 2 workers, a global batch of 64, 100 steps in 2.0 s."""
    return {
        "status": "completed", "run_dir": "/runs/ar", "strategy": "allreduce",
        "params": 43_000, "workers": 2, "processes": 2, "batch_size": 64,
        "batch_size_meaning": "global (split across workers)", "train_seconds": 2.0,
        "steps": 100, "rounds": 0, "samples": 6400, "environment": {"cores": 2},
    }  # fmt: skip


def link_file(tmp_path, overhead=1.25, **fields):
    """A link whose times follow the model exactly, fitted and written as the probe does."""
    p2p = [ALPHA + m * BETA for m in SIZES]
    summed = [ring_allreduce_seconds(2, m // 4, ALPHA, 1 / (BETA * overhead)) for m in SIZES]
    data = {"format": LINK_FORMAT, "world": 2, "sizes_bytes": SIZES, "allreduce_seconds": summed}
    data |= {**fit_link(SIZES, p2p, summed, 2), **fields}
    path = tmp_path / "link.json"
    path.write_text(json.dumps(data))
    return path


def test_fit_line_recovers_a_line_and_clamps_a_negative_intercept():
    assert fit_line([1, 2, 3, 4], [3, 5, 7, 9]) == pytest.approx((1.0, 2.0))
    # a shaper's burst makes small messages fast: the line through 0 instead
    intercept, slope = fit_line([1, 2, 4], [0.5, 2.0, 4.5])
    assert intercept == 0.0 and slope == pytest.approx((0.5 + 4 + 18) / 21)


def test_fit_line_needs_two_sizes():
    with pytest.raises(ValueError, match="two message sizes"):
        fit_line([64, 64], [1.0, 1.1])


def test_fit_link_gives_back_alpha_beta_and_the_allreduce_overhead():
    p2p = [ALPHA + m * BETA for m in SIZES]
    summed = [ring_allreduce_seconds(4, m // 4, 2 * ALPHA, 1 / (1.5 * BETA)) for m in SIZES]

    fit = fit_link(SIZES, p2p, summed, 4)

    assert fit["alpha_seconds"] == pytest.approx(ALPHA, rel=1e-6)
    assert fit["beta_seconds_per_byte"] == pytest.approx(BETA, rel=1e-6)
    assert fit["bandwidth_bytes_per_second"] == pytest.approx(1 / BETA, rel=1e-5)
    assert fit["allreduce_alpha_seconds"] == pytest.approx(2 * ALPHA, rel=1e-5)
    assert fit["overhead"] == pytest.approx(1.5, rel=1e-5)


def test_fit_link_refuses_times_that_do_not_grow():
    flat = [1e-3] * len(SIZES)
    with pytest.raises(ValueError, match="did not grow"):
        fit_link(SIZES, flat, flat, 2)


def test_a_link_file_is_a_network_with_its_own_alpha_and_the_overhead(tmp_path):
    path = link_file(tmp_path)

    nets = parse_networks(f"1gbit,{path}")

    assert nets[0] == ("1gbit", 1.25e8)
    label, bandwidth, alpha = nets[1]
    assert label == "link.json"
    assert bandwidth == pytest.approx(1 / (BETA * 1.25), rel=1e-5)
    assert alpha == pytest.approx(ALPHA, rel=1e-5)


def test_the_calibrated_what_if_prices_the_measured_allreduce(tmp_path):
    path = link_file(tmp_path)

    rows, reason = predict(summary(), parse_networks(str(path)), 50e-6, workers=[1, 2])

    assert reason is None and [r["network"] for r in rows] == ["link.json"] * 2
    two = rows[1]
    assert two["latency_seconds"] == pytest.approx(ALPHA, rel=1e-5)
    measured = ring_allreduce_seconds(2, 43_000, ALPHA, 1 / (BETA * 1.25))
    assert two["comm_seconds"] == pytest.approx(measured, rel=1e-4)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "does not exist"),
        ("{not json", "not JSON"),
        ('{"format": "other"}', "not from distlab probe-network"),
        (json.dumps({"format": LINK_FORMAT, "alpha_seconds": -1}), "finite numbers >= 0"),
    ],
)
def test_a_bad_link_file_is_one_line_naming_it(tmp_path, content, words):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)

    with pytest.raises(ValueError) as err:
        parse_networks(f"1gbit,{path}")

    message = str(err.value)
    assert "\n" not in message and repr(str(path)) in message and words in message


def test_a_measured_link_is_priced_at_the_sizes_around_the_message(tmp_path):
    # a shaper: below 64 kB at line rate, above it slower per byte
    seconds = [1e-4 + m * (1e-9 if m <= 65536 else 4e-8) for m in SIZES]
    path = link_file(tmp_path, allreduce_seconds=seconds)
    link = parse_networks(str(path))[0]

    alpha, bandwidth = link.at(178_000)

    # the line through 64 kB and 256 kB, the two measured sizes within 4x of 178 kB
    slope = (seconds[8] - seconds[7]) / (SIZES[8] - SIZES[7])
    intercept = seconds[7] - slope * SIZES[7]
    expected = max(intercept, 0.0) + 178_000 * (slope if intercept >= 0 else 0)
    if intercept < 0:  # refitted through 0
        expected = (
            178_000
            * (SIZES[7] * seconds[7] + SIZES[8] * seconds[8])
            / (SIZES[7] ** 2 + SIZES[8] ** 2)
        )
    assert ring_allreduce_seconds(2, 178_000 // 4, alpha, bandwidth) == pytest.approx(
        expected, rel=1e-6
    )
