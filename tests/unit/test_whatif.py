"""Network what-if: the alpha-beta formulas against values worked by hand, predictions from
summaries, the one-line errors, and the figure."""

from __future__ import annotations

import pytest
from tests.conftest import run_small

from distlab.experiments.whatif import (
    MODEL_NOTE,
    fedavg_round_seconds,
    gossip_degree,
    gossip_round_seconds,
    local_sgd_seconds,
    param_server_seconds,
    parse_bandwidth,
    parse_latency,
    parse_networks,
    predict,
    ring_allreduce_seconds,
)
from distlab.experiments.whatif_plot import figure_title, plot_whatif

PNG = b"\x89PNG\r\n\x1a\n"
# The worked example: P = 1,000,000 float32 parameters (4e6 bytes), 1 Gbit/s = 1.25e8 B/s,
# alpha = 50 us. One model over the link: 4e6 / 1.25e8 = 0.032 s.
P, GBIT, ALPHA = 1_000_000, 1.25e8, 50e-6
ONE_GBIT = [("1gbit", GBIT)]


def summary(**fields):
    """A completed allreduce run as summary.json holds it: 2 workers, global batch 64 split
    across them, 100 steps of 64 samples in 2.0 s on 2 cores. Compute per sample per worker:
    (2.0 s / 100 steps) / 32 samples = 6.25e-4 s."""
    base = {
        "status": "completed",
        "run_dir": "/runs/ar",
        "strategy": "allreduce",
        "params": P,
        "workers": 2,
        "processes": 2,
        "batch_size": 64,
        "batch_size_meaning": "global (split across workers)",
        "train_seconds": 2.0,
        "steps": 100,
        "rounds": 0,
        "samples": 6400,
        "environment": {"cores": 2},
    }
    return {**base, **fields}


def at(rows, workers, network="1gbit"):
    return next(r for r in rows if r["workers"] == workers and r["network"] == network)


# --- the formulas --------------------------------------------------------------------------------


def test_ring_allreduce_matches_the_hand_worked_values():
    # N = 4: 2*3*(5e-5 + 4e6/(4*1.25e8)) = 6*(5e-5 + 8e-3) = 0.0483 s
    assert ring_allreduce_seconds(4, P, ALPHA, GBIT) == pytest.approx(0.0483)
    # N = 2: 2*1*(5e-5 + 4e6/(2*1.25e8)) = 2*(5e-5 + 0.016) = 0.0321 s
    assert ring_allreduce_seconds(2, P, ALPHA, GBIT) == pytest.approx(0.0321)
    assert ring_allreduce_seconds(1, P, ALPHA, GBIT) == 0.0


def test_server_fedavg_gossip_and_local_sgd_match_the_hand_worked_values():
    # PS, N = 4: 2*5e-5 + 4*2*4e6/1.25e8 = 1e-4 + 4*0.064 = 0.2561 s
    assert param_server_seconds(4, P, ALPHA, GBIT) == pytest.approx(0.2561)
    # FedAvg, K = 10 clients: 1e-4 + 10*0.064 = 0.6401 s
    assert fedavg_round_seconds(10, P, ALPHA, GBIT) == pytest.approx(0.6401)
    # gossip, degree 2: 2*(5e-5 + 0.032) = 0.0641 s
    assert gossip_round_seconds(2, P, ALPHA, GBIT) == pytest.approx(0.0641)
    # local SGD, N = 4, H = 8: 0.0483 / 8 = 0.0060375 s per step
    assert local_sgd_seconds(4, P, ALPHA, GBIT, 8) == pytest.approx(0.0060375)


def test_gossip_degree_is_the_busiest_workers_on_the_strategys_graph():
    # a ring of 2 has one neighbour, a 2x4 torus 1 up/down + 2 left/right, a 4x4 torus 4,
    # the star's hub all the others; a torus on 7 workers does not exist
    assert [gossip_degree("ring", n) for n in (1, 2, 8)] == [0, 1, 2]
    assert [gossip_degree("torus", n) for n in (8, 16, 7)] == [3, 4, None]
    assert [gossip_degree("star", 16), gossip_degree("complete", 5)] == [15, 4]
    assert gossip_degree("random-k", 8, mean_degree=3.5) == 3.5
    assert gossip_degree("file", 8) is None


# --- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "bytes_per_second"),
    [
        ("400kbit", 5e4),
        ("100mbit", 1.25e7),
        ("1gbit", 1.25e8),
        ("2.5gbit", 3.125e8),
        ("10GBit", 1.25e9),
        ("1tbit", 1.25e11),
        ("8kbps", 1e3),
        ("100Mbps", 1.25e7),
        ("1gbps", 1.25e8),
        ("1tbps", 1.25e11),
    ],
)
def test_bandwidth_units_are_bits_per_second(text, bytes_per_second):
    assert parse_bandwidth(text) == pytest.approx(bytes_per_second)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ns", 5e-7), ("50us", 5e-5), ("50µs", 5e-5), ("2ms", 2e-3), ("1.5s", 1.5), ("0us", 0.0)],
)
def test_latency_units(text, seconds):
    assert parse_latency(text) == pytest.approx(seconds)


def test_networks_keep_their_order_and_drop_repeats():
    nets = parse_networks("1gbit, 10gbit,100MBIT,1gbit")

    assert nets == [("1gbit", 1.25e8), ("10gbit", 1.25e9), ("100mbit", 1.25e7)]


@pytest.mark.parametrize("text", ["1gb", "fast", "0gbit", "-1gbit", "1 gigabit", "1e9"])
def test_an_unknown_speed_is_one_line_naming_it_and_the_forms(text):
    with pytest.raises(ValueError) as err:
        parse_networks(f"10gbit,{text}")

    message = str(err.value)
    assert "\n" not in message and repr(text) in message and "mbit, gbit" in message


@pytest.mark.parametrize("text", ["", " , "])
def test_no_speed_at_all_is_one_line(text):
    with pytest.raises(ValueError, match="at least one speed"):
        parse_networks(text)


@pytest.mark.parametrize("text", ["50", "-5us", "5 parsecs", "fast", "50 u"])
def test_a_bad_latency_is_one_line_naming_it_and_the_units(text):
    with pytest.raises(ValueError) as err:
        parse_latency(text)

    message = str(err.value)
    assert "\n" not in message and repr(text) in message and "ns, us, ms or s" in message


def test_predict_refuses_a_bad_latency_or_worker_count():
    with pytest.raises(ValueError, match="latency"):
        predict(summary(), ONE_GBIT, -1.0)
    with pytest.raises(ValueError, match="worker counts"):
        predict(summary(), ONE_GBIT, ALPHA, workers=[1, 0])


# --- predictions ---------------------------------------------------------------------------------


def test_allreduce_with_a_global_batch_speeds_up_as_worked_by_hand():
    rows, reason = predict(summary(), [("1gbit", GBIT), ("10gbit", 1.25e9)], ALPHA)

    assert reason is None
    # N = 1: 64 samples x 6.25e-4 s = 0.04 s, no exchange: 1600 samples/s
    one = at(rows, 1)
    assert one["unit_seconds"] == pytest.approx(0.04) and one["speedup"] == 1.0
    assert one["samples_per_second"] == pytest.approx(1600)
    # N = 4: 16 samples x 6.25e-4 = 0.01 s + ring 0.0483 s = 0.0583 s; 0.04 / 0.0583 = 0.6861
    four = at(rows, 4)
    assert four["compute_seconds"] == pytest.approx(0.01)
    assert four["comm_seconds"] == pytest.approx(0.0483)
    assert four["speedup"] == pytest.approx(0.686106, rel=1e-5)
    # 10 Gbit/s, N = 4: ring 6*(5e-5 + 8e-4) = 0.0051 s; 0.04 / 0.0151 = 2.6490
    assert at(rows, 4, "10gbit")["speedup"] == pytest.approx(2.649007, rel=1e-5)
    # a global batch of 64 has no 65th chunk
    assert max(r["workers"] for r in rows) == 64


def test_per_worker_batches_grow_with_n():
    rows, _ = predict(summary(batch_size=32, batch_size_meaning="per worker"), ONE_GBIT, ALPHA)

    # 32 samples x 6.25e-4 = 0.02 s at every N; N = 4: 128 samples / (0.02 + 0.0483) s =
    # 1874.08 samples/s against 32 / 0.02 = 1600: speedup 1.17130
    assert at(rows, 4)["samples_per_second"] == pytest.approx(1874.085, rel=1e-5)
    assert at(rows, 4)["speedup"] == pytest.approx(1.171303, rel=1e-5)
    assert max(r["workers"] for r in rows) == 1024


def test_ranks_beyond_the_cores_count_as_time_shared():
    # 4 ranks on 2 cores: 2.0 s x 2 working / 6400 samples = 6.25e-4 s, as with 2 workers
    rows, _ = predict(summary(workers=4), ONE_GBIT, ALPHA)

    assert at(rows, 1)["compute_seconds"] == pytest.approx(0.04)


def test_parameter_server_is_bound_by_the_servers_link():
    rows, _ = predict(summary(strategy="param-server", processes=3), ONE_GBIT, ALPHA)

    # N = 1: 0.04 + 1e-4 + 0.064 = 0.1041 s; N = 4: 0.01 + 0.2561 = 0.2661 s; 0.1041/0.2661
    assert at(rows, 1)["unit_seconds"] == pytest.approx(0.1041)
    assert at(rows, 4)["speedup"] == pytest.approx(0.391206, rel=1e-5)


def test_local_sgd_pays_the_ring_once_per_period():
    every_4 = summary(strategy="local-sgd", averagings=25, bytes_per_averaging_analytic=8 * P)
    with_momenta = {**every_4, "bytes_per_averaging_analytic": 16 * P}
    at_end = {**every_4, "averagings": 1}

    # H = 100/25 = 4: 0.0483 / 4 = 0.012075 s per step; 0.04 / (0.01 + 0.012075) = 1.81200
    row = at(predict(every_4, ONE_GBIT, ALPHA)[0], 4)
    assert row["comm_seconds"] == pytest.approx(0.012075)
    assert row["speedup"] == pytest.approx(1.812004, rel=1e-5)
    # momenta double the message: 6*(5e-5 + 8e6/(4*1.25e8)) / 4 = 0.0963 / 4 = 0.024075 s
    assert at(predict(with_momenta, ONE_GBIT, ALPHA)[0], 4)["comm_seconds"] == pytest.approx(
        0.024075
    )
    # period end: one averaging in 100 steps, 0.0483 / 100
    assert at(predict(at_end, ONE_GBIT, ALPHA)[0], 4)["comm_seconds"] == pytest.approx(0.000483)


def test_gossip_mixes_once_per_period_at_the_topologys_degree():
    ring = summary(strategy="gossip", rounds=50, topology="ring", mean_degree=1.0)
    torus = {**ring, "topology": "torus"}

    # 50 rounds in 100 steps, degree 2 on a ring of 4: 0.0641 * 50/100 = 0.03205 s per step
    assert at(predict(ring, ONE_GBIT, ALPHA)[0], 4)["comm_seconds"] == pytest.approx(0.03205)
    # a torus needs rows x cols >= 2 x 2: no row for N = 2, one for N = 1 (the baseline)
    assert [r["workers"] for r in predict(torus, ONE_GBIT, ALPHA)[0]] == [1, 4, 8, 16, 32, 64]


def test_fedavg_rounds_scale_in_clients_per_round():
    fed = summary(
        strategy="fedavg",
        processes=3,  # server + 2 client hosts
        rounds=10,
        steps=0,
        samples=50_000,  # 5 clients x 1000 samples x 10 rounds
        train_seconds=20.0,
        batch_size_meaning="per client (local batch)",
        bytes_per_round_logical=2 * P * 4 * 5,  # K = 5
    )

    rows, reason = predict(fed, ONE_GBIT, ALPHA)

    # 20 s x 2 hosts / 50,000 samples = 8e-4 s per sample: 0.8 s per client per round.
    # N = 1: 0.8 + 0.0641 = 0.8641 s for 1000 samples; N = 10: 0.8 + 0.6401 = 1.4401 s for
    # 10,000: speedup 10 x 0.8641 / 1.4401 = 6.00028
    assert reason is None and {r["unit"] for r in rows} == {"round"}
    assert at(rows, 1)["unit_seconds"] == pytest.approx(0.8641)
    assert predict(fed, ONE_GBIT, ALPHA, workers=[1, 10])[0][1]["speedup"] == pytest.approx(
        6.000278, rel=1e-5
    )


def test_n_equal_one_is_speedup_one_for_every_model():
    cases = [
        summary(),
        summary(strategy="param-server"),
        summary(strategy="local-sgd", averagings=10),
        summary(strategy="gossip", rounds=100, topology="star"),
    ]
    for s in cases:
        rows, _ = predict(s, parse_networks("100mbit,10gbit"), ALPHA)
        assert [r["speedup"] for r in rows if r["workers"] == 1] == [1.0, 1.0]


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"strategy": "hogwild"}, "one machine"),
        ({"strategy": "pipeline"}, "activations"),
        ({"strategy": "centralized"}, "one process"),
        ({"strategy": "my-own"}, "no network model for strategy 'my-own'"),
        ({"status": "failed"}, "run failed"),
        ({"params": None}, "no params"),
        ({"steps": 0}, "no steps"),
        ({"train_seconds": None}, "no train_seconds"),
        ({"strategy": "gossip", "rounds": 5, "topology": "file"}, "topology 'file'"),
        ({"strategy": "fedavg", "rounds": 10}, "no bytes_per_round_logical"),
        ({"batch_size_meaning": None}, "batch size meaning"),
    ],
)
def test_no_row_is_invented_where_the_model_or_the_figures_are_missing(fields, why):
    rows, reason = predict(summary(**fields), ONE_GBIT, ALPHA)

    assert rows == []
    assert why in reason


def test_a_real_run_predicts_from_its_own_summary(tmp_path):
    run = run_small(tmp_path, strategy="allreduce", workers=2, threads=1)
    s = run.summary

    rows, reason = predict(s, ONE_GBIT, ALPHA, workers=[1, 2])

    # per sample: train seconds x 2 workers / samples; N = 2 adds 2*(alpha + P*4/(2*beta))
    per_sample = s["train_seconds"] * 2 / s["samples"]
    assert reason is None and rows[0]["run"] == run.run_dir.name
    assert rows[0]["compute_seconds"] == pytest.approx(per_sample * s["batch_size"], rel=1e-5)
    assert rows[1]["comm_seconds"] == pytest.approx(
        2 * (ALPHA + s["params"] * 4 / (2 * GBIT)), rel=1e-5
    )
    assert rows[0]["speedup"] == 1.0


# --- the figure ----------------------------------------------------------------------------------


def test_plot_writes_a_png_that_says_it_is_a_model(tmp_path):
    nets = parse_networks("100mbit,1gbit,10gbit")
    rows = predict(summary(), nets, ALPHA)[0]
    rows += predict(summary(strategy="param-server", run_dir="/runs/ps"), nets, ALPHA)[0]
    measured = [{"strategy": "allreduce", "workers": 2, "speedup": 1.4}]

    path = plot_whatif(rows, measured, tmp_path / "whatif.png")

    assert path.read_bytes().startswith(PNG)
    title = figure_title(rows)
    assert MODEL_NOTE in title and "not a measurement" in title and "50 us" in title


def test_plot_refuses_nothing_to_draw_and_a_bad_path(tmp_path):
    rows = predict(summary(), ONE_GBIT, ALPHA)[0]
    with pytest.raises(ValueError, match="no predicted rows"):
        plot_whatif([], [], tmp_path / "whatif.png")
    with pytest.raises(ValueError, match="must end in"):
        plot_whatif(rows, [], tmp_path / "whatif.jpg")
