"""Bulyan, centered clipping and norm bounding: hand-worked values, Flower's own Bulyan on the
same inputs, their chunked forms, and fedavg runs under them."""

import numpy as np
import pytest
import torch
from flwr.server.strategy.aggregate import aggregate_bulyan, aggregate_krum

from distlab.api import run
from distlab.data.datasets import load_dataset
from distlab.models import build_model
from distlab.strategies.aggregate import AGGREGATORS, AggregatorOptions, start_aggregation
from distlab.strategies.robust import (
    CenteredClipping,
    DeltaRule,
    NormBounding,
    bulyan,
    centered_clip,
    norm_bound,
)
from distlab.training import flat_params


def random_rows(clients=20, size=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(clients, size, generator=gen)
    counts = torch.randint(1, 100, (clients,), generator=gen).numpy()
    return rows, counts


def fed_in_chunks(aggregation, rows, counts, chunk):
    for lo in range(0, len(rows), chunk):
        aggregation.add(rows[lo : lo + chunk], counts[lo : lo + chunk])
    return aggregation.result()


# --- Bulyan ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("clients", "f"), [(7, 1), (11, 2), (20, 3), (8, 0), (15, 3)])
def test_bulyan_gives_flowers_result_on_the_same_inputs(clients, f):
    rows, counts = random_rows(clients, seed=clients)
    rows[:f] += 5.0  # f rows far from the others, as attackers' would be
    # Flower's rule takes each client's layers: here two, of 4 and 5 values
    results = [([r.numpy()[:4], r.numpy()[4:]], int(c)) for r, c in zip(rows, counts, strict=True)]

    theirs = np.concatenate(aggregate_bulyan(results, f, aggregate_krum, to_keep=0))

    assert bulyan(rows, counts, f).numpy() == pytest.approx(theirs, abs=1e-6)


def test_bulyan_by_hand():
    # n=7, f=1: Krum picks theta=5 of them (never 90), beta=3 closest to their median
    rows = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [90.0]])

    # Krum (3 nearest): 2 then 3 then 1 or 4 ... the five chosen are 0..4 or 1..5, median 2
    # or 3; with 0..4 chosen (ties go to the first), the 3 closest to 2 are 1, 2, 3 -> 2
    assert bulyan(rows, f=1).tolist() == [2.0]


def test_bulyan_needs_4f_plus_3_clients():
    with pytest.raises(
        ValueError, match=r"bulyan needs clients >= 4 \* f \+ 3 \(got 10 clients, f=2\)"
    ):
        bulyan(torch.zeros(10, 3), f=2)


def test_bulyan_keeps_far_rows_out_where_the_mean_follows_them():
    rows, counts = random_rows(11, size=50)
    rows[:2] = 100.0
    honest = rows[2:]

    out = bulyan(rows, counts, f=2)

    # every coordinate is a mean of honest values; the mean is dragged 18 away per coordinate
    assert bool(((honest.min(dim=0).values <= out) & (out <= honest.max(dim=0).values)).all())
    assert float((rows.mean(dim=0) - honest.mean(dim=0)).abs().min()) > 15


# --- centered clipping -------------------------------------------------------------------------


def test_centered_clipping_by_hand():
    rows = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 0.0]])

    # tau=1 from v=0: [3,4] (norm 5) -> [0.6, 0.8]; [0,1] and [0,0] stay; mean [0.2, 0.6]
    one = centered_clip(rows, radius=1.0)
    # a second iteration from [0.2, 0.6]: [2.8,3.4] -> /4.40 ; [-0.2,0.4] ; [-0.2,-0.6]
    d = torch.tensor([[2.8, 3.4], [-0.2, 0.4], [-0.2, -0.6]], dtype=torch.float64)
    d[0] /= d[0].norm()
    two = torch.tensor([0.2, 0.6], dtype=torch.float64) + d.mean(dim=0)

    assert one.tolist() == pytest.approx([0.2, 0.6])
    assert centered_clip(rows, radius=1.0, iters=2).tolist() == pytest.approx(two.tolist())


def test_centered_clipping_starts_from_the_centre_and_moves_at_most_tau():
    rows = torch.tensor([[10.0, 0.0], [10.0, 0.0], [-50.0, 0.0]])
    center = torch.tensor([9.0, 0.0])

    out = centered_clip(rows, radius=0.5, center=center)

    # from 9: +0.5, +0.5, -0.5 -> 9 + 0.5 / 3
    assert out.tolist() == pytest.approx([9.0 + 0.5 / 3, 0.0])


def test_centered_clipping_with_a_large_radius_is_the_plain_mean():
    rows, counts = random_rows()

    out = centered_clip(rows, counts, radius=1e9, iters=3)

    assert torch.allclose(out, rows.mean(dim=0), atol=1e-6)


@pytest.mark.parametrize("iters", [1, 3])
@pytest.mark.parametrize("chunk", [1, 7, 20])
def test_centered_clipping_in_chunks_equals_the_one_shot_rule(iters, chunk):
    rows, counts = random_rows()
    options = AggregatorOptions(clip_radius=1.5, clip_iters=iters, clip_center=rows[0] * 0.1)

    streamed = fed_in_chunks(start_aggregation("centered-clip", options), rows, counts, chunk)
    one_shot = AGGREGATORS["centered-clip"](rows, counts, options)

    assert torch.allclose(streamed, one_shot, rtol=1e-6, atol=1e-7)


def test_centered_clipping_keeps_no_rows_with_one_iteration():
    rows, counts = random_rows()
    one, three = CenteredClipping(1.0, 1), CenteredClipping(1.0, 3)

    fed_in_chunks(one, rows, counts, 5)
    three.add(rows[:5], counts[:5])

    assert one.kept == [] and len(three.kept) == 1


# --- norm bounding -----------------------------------------------------------------------------


def test_norm_bounding_by_hand():
    rows = torch.tensor([[3.0, 4.0], [1.0, 0.0]])

    # [3,4] scaled to norm 1 -> [0.6, 0.8]; weights 1 and 3 -> ([0.6,0.8] + 3 [1,0]) / 4
    assert norm_bound(rows, [1, 3], bound=1.0).tolist() == pytest.approx([0.9, 0.2])


def test_norm_bounding_with_a_large_bound_is_the_weighted_mean():
    rows, counts = random_rows()

    out = AGGREGATORS["norm-bound"](rows, counts, AggregatorOptions(norm_bound=1e9))

    assert torch.allclose(out, AGGREGATORS["mean"](rows, counts, AggregatorOptions()), atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 7, 20])
def test_norm_bounding_streams_and_equals_the_one_shot_rule(chunk):
    rows, counts = random_rows()
    options = AggregatorOptions(norm_bound=0.8)

    aggregation = start_aggregation("norm-bound", options)
    streamed = fed_in_chunks(aggregation, rows, counts, chunk)

    assert isinstance(aggregation, NormBounding)
    assert torch.allclose(streamed, norm_bound(rows, counts, 0.8), rtol=1e-6, atol=1e-7)
    assert float(streamed.norm()) <= 0.8 + 1e-6


@pytest.mark.parametrize(("bad", "message"), [(0.0, "bound > 0"), (-1.0, "bound > 0")])
def test_norm_bounding_refuses_a_bound_that_is_not_positive(bad, message):
    with pytest.raises(ValueError, match=message):
        NormBounding(bad)


# --- rules on deltas: the round's start and the centre across rounds --------------------------


def test_a_delta_rule_clips_rows_minus_the_start_and_moves_its_centre_per_round():
    start = torch.tensor([100.0, 100.0])
    options = AggregatorOptions(clip_radius=1.0)

    def new_inner(center):
        return CenteredClipping(options.clip_radius, 1, center)

    rule = DeltaRule(new_inner, lambda: start)
    first = rule()
    first.add(start + torch.tensor([[3.0, 4.0], [0.0, 0.0]]), np.array([1, 1]))
    out = first.result()
    rule().add(start + torch.tensor([[9.0, 9.0]]), np.array([1]))  # an attempt left unfinished
    second = rule()
    second.add(start + torch.tensor([[0.3, 0.4]]), np.array([1]))

    # round 1 from 0: ([0.6, 0.8] + 0) / 2; round 2 from [0.3, 0.4]: the delta is the centre
    assert out.tolist() == pytest.approx([100.3, 100.4])
    assert second.result().tolist() == pytest.approx([100.3, 100.4])


# --- fedavg runs -------------------------------------------------------------------------------


def fedavg_run(tmp_path, name, **strategy):
    return run(
        {
            "dataset": "synthetic",
            "model": "logreg",
            "strategy": {"name": "fedavg", "executor": "vectorized", "clients": 7, **strategy},
            "optimizer": {"lr": 0.1},
            "out_dir": str(tmp_path),
            "name": name,
        }
    )


def moved(result) -> float:
    """How far the run's final model is from the model it started from."""
    data = load_dataset("synthetic")
    start = flat_params(build_model("logreg", data.input_shape, data.classes, seed=0))
    state = torch.load(result.run_dir / "model.pt", weights_only=True)
    final = torch.cat([v.reshape(-1) for v in state.values()])
    return float((final - start).norm())


def test_norm_bounded_rounds_move_the_model_at_most_m_each(tmp_path):
    # each round's aggregate is a mean of deltas of norm <= M: R rounds move it <= R * M
    bounded = fedavg_run(tmp_path, "nb", rounds=3, aggregator="norm-bound", norm_bound=0.05,
                         aggregate_chunk=3)  # fmt: skip
    free = fedavg_run(tmp_path, "mean", rounds=3)

    assert bounded.summary["status"] == "completed"
    assert 0.1 < moved(bounded) <= 3 * 0.05 + 1e-5 < moved(free)


def test_centered_clipping_and_bulyan_train_a_model(tmp_path):
    clipped = fedavg_run(tmp_path, "cc", rounds=3, aggregator="centered-clip", clip_radius=0.05)
    robust = fedavg_run(tmp_path, "bulyan", rounds=3, aggregator="bulyan", krum_f=1)
    free = fedavg_run(tmp_path, "mean", rounds=3)

    # centered clipping: round r's centre moves <= tau, so 3 rounds move <= (1 + 2 + 3) tau
    assert 0 < moved(clipped) <= 6 * 0.05 + 1e-5
    assert robust.summary["final_accuracy"] > free.summary["final_accuracy"] - 0.05
