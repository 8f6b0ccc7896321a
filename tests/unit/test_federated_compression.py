"""The compressed uplink and downlink of fedavg's executors, on their own."""

from __future__ import annotations

import numpy as np
import torch

from distlab.config_sections import CompressConfig
from distlab.federated.compression import Downlink, decoded_rows, steps_aggregate
from distlab.transforms.chain import make_chain

P = 200


def chain(**kw):
    return make_chain(CompressConfig(kind="topk", ratio=0.05, **kw), [(P,)], seed=3)


def test_a_non_finite_row_stays_nan_and_leaves_its_memory_alone():
    ef = chain(error_feedback=True)
    rows = torch.randn(3, P)
    rows[1, 7] = float("nan")

    out = decoded_rows(ef, rows, np.array([4, 5, 6]))

    assert torch.isnan(out[1]).all()
    assert torch.isfinite(out[[0, 2]]).all()
    assert torch.count_nonzero(out[0]) == 10  # the 5% kept
    assert torch.equal(ef.memory[5], torch.zeros(P))  # client 5 sent nothing
    assert torch.allclose(ef.memory[4] + out[0], rows[0])


def test_finite_rows_are_one_batched_round_trip():
    rows = torch.randn(4, P)
    senders = np.arange(4)

    assert torch.equal(decoded_rows(chain(), rows, senders), chain().roundtrip(rows, senders))


def test_the_held_copy_reaches_a_model_that_stops_changing():
    # the difference from the held copy carries what earlier payloads dropped: sent again
    # and again, it brings the clients' copy to the server's model
    down = Downlink(chain())
    current = torch.randn(P)
    down.advance(1, torch.zeros(P))  # clients hold the initial model
    gaps = []
    for round_ in range(2, 30):
        down.advance(round_, current)
        gaps.append(float((current - down.held).abs().max()))
    assert gaps[-1] < 1e-6 < gaps[0]
    assert len(down.sent) == 29


def test_a_round_sends_once_whatever_its_chunks_and_attempts():
    down = Downlink(chain())
    down.advance(1, torch.zeros(P))
    down.advance(2, torch.ones(P))
    held = down.held.clone()

    down.advance(2, torch.ones(P))

    assert torch.equal(down.held, held) and sorted(down.sent) == [1, 2]


def test_the_held_copy_is_the_sum_of_the_payloads_a_host_decodes():
    down = Downlink(chain())
    start = torch.randn(P)
    down.advance(1, start)
    for round_ in range(2, 6):
        down.advance(round_, start + round_ * torch.randn(P))
    host = start.clone()
    for round_ in sorted(down.sent):
        host = host + down.chain.decode(down.sent[round_])[0]

    assert torch.equal(host, down.held)


def test_only_majority_vote_steps_the_aggregate():
    assert not steps_aggregate(None)
    assert not steps_aggregate(chain())
