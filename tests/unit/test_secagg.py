"""SecAgg+ (transforms/secagg.py): a masked update looks like noise, the server's unmasked
sum is the plain sum of the quantized updates exactly, also with dropped clients, and the
server's function is given only masked inputs, public keys and revealed shares."""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest
from scipy import stats

from distlab.transforms import secagg

P = 20_000


def quantized(n: int, seed: int = 0) -> np.ndarray:
    """n quantized deltas that look like a model's: small Gaussian values around 0."""
    rng = np.random.default_rng(seed)
    deltas = rng.normal(0, 0.05, (n, P)).astype(np.float32)
    return secagg.quantize(deltas, 1.0, 22, rng)


def protocol(q: np.ndarray, k, t, senders) -> tuple[np.ndarray, np.ndarray, secagg.Cohort]:
    """(masked inputs of the senders, the server's unmasked sum, the cohort)."""
    ids = list(range(len(q)))
    cohort = secagg.start_cohort(ids, k, t, b"test", np.random.default_rng(1))
    masked = secagg.masked_inputs(cohort, senders, q[senders])
    total = secagg.finish_cohort(cohort, dict(zip(senders, masked, strict=True)))
    return masked, total, cohort


def test_a_masked_update_is_uniform_over_uint32_and_uncorrelated_with_the_update():
    q = quantized(5)
    masked, _, _ = protocol(q, None, 3, [0, 1, 2, 3, 4])
    row = masked[0].astype(np.float64) / 2**32

    uniform = stats.kstest(row, "uniform")
    counts = np.bincount((masked[0] >> 24).astype(np.int64), minlength=256)
    chi = stats.chisquare(counts)
    corr = np.corrcoef(row, q[0].astype(np.float64))[0, 1]

    assert uniform.pvalue > 1e-3 and chi.pvalue > 1e-3
    assert abs(corr) < 0.05
    # the plain quantized update is far from uniform: the tests can tell
    assert stats.kstest(q[0].astype(np.float64) / 2**32, "uniform").pvalue < 1e-6


@pytest.mark.parametrize(
    ("k", "t", "senders"),
    [
        (None, 5, list(range(8))),  # SecAgg: every pair, nobody drops
        (None, 5, [0, 2, 3, 5, 6, 7]),  # two dropped after sharing keys
        (4, 3, [1, 2, 3, 4, 6, 7]),  # SecAgg+: 4 neighbours, two dropped
    ],
)
def test_the_unmasked_sum_is_the_plain_sum_of_the_quantized_updates_exactly(k, t, senders):
    q = quantized(8, seed=len(senders))

    _, total, _ = protocol(q, k, t, senders)

    assert total.dtype == np.uint32
    np.testing.assert_array_equal(total, q[senders].sum(axis=0, dtype=np.uint32))


def test_the_sum_of_masked_inputs_alone_is_not_the_sum():
    q = quantized(6)
    masked, _, _ = protocol(q, None, 4, [0, 1, 2, 4, 5])

    assert not np.array_equal(masked.sum(axis=0, dtype=np.uint32), q[[0, 1, 2, 4, 5]].sum(0))


def test_too_few_surviving_share_holders_cannot_unmask():
    q = quantized(6)
    with pytest.raises(ValueError, match="needs 5 shares"):
        protocol(q, None, 5, [0, 1, 2, 3])


def test_the_server_function_takes_only_masked_inputs_keys_and_shares():
    params = list(inspect.signature(secagg.unmask_sum).parameters)

    assert params == ["masked", "revealed", "graph", "keys", "t", "tag"]


def test_a_survivor_reveals_only_the_seed_share_of_a_survivor_and_the_key_share_of_a_drop():
    q = quantized(5)
    senders = [0, 1, 2, 3]
    _, _, cohort = protocol(q, None, 3, senders)

    revealed = cohort.clients[0].unmask(set(senders), {4}, cohort.keys)

    assert {u: kind for u, (kind, _) in revealed.items()} == {
        0: "seed", 1: "seed", 2: "seed", 3: "seed", 4: "key"
    }  # fmt: skip


def test_shamir_joins_any_t_shares_and_refuses_fewer():
    secret = os.urandom(32)
    shares = secagg.shamir_split(secret, list(range(7)), 4)

    assert secagg.shamir_join({h: shares[h] for h in (6, 1, 3, 2)}, 4) == secret
    assert secagg.shamir_join({h: shares[h] for h in (0, 4, 5, 6)}, 4) == secret
    with pytest.raises(ValueError):
        secagg.shamir_join({h: shares[h] for h in (0, 1, 2)}, 4)


def test_quantization_is_unbiased_and_within_one_level():
    rng = np.random.default_rng(0)
    deltas = rng.uniform(-0.5, 0.5, (400, 1000)).astype(np.float32)
    q = secagg.quantize(deltas, 1.0, 8, rng)
    step = 2.0 / (2**8 - 1)

    one = secagg.dequantize_mean(q[:1].sum(0, dtype=np.uint32), 1, 1.0, 8)
    mean = secagg.dequantize_mean(q.sum(0, dtype=np.uint32), 400, 1.0, 8)

    assert np.abs(one - deltas[0]).max() <= step * 1.0001
    assert np.abs(mean - deltas.mean(0)).max() < step / 4  # rounding errors average out


def test_secagg_plus_gives_each_client_about_k_neighbours_and_a_symmetric_graph():
    graph = secagg.neighbour_graph(list(range(50)), 6, np.random.default_rng(0))

    assert all(len(vs) == 6 for vs in graph.values())
    assert all(u in graph[v] for u, vs in graph.items() for v in vs)


def test_bytes_are_counted_per_client_from_the_messages():
    q = quantized(6)
    _, _, cohort = protocol(q, 2, 2, [0, 1, 2, 3, 4])

    dropped, sent = cohort.bytes[5], cohort.bytes[0]
    assert sent > dropped + q[0].nbytes  # the masked input and the unmasking shares
    assert dropped > 64  # its keys and its encrypted shares went out


def test_the_server_aborts_when_a_secret_has_fewer_than_t_surviving_holders():
    graph = secagg.neighbour_graph(list(range(8)), 2, np.random.default_rng(0))
    u = 0
    holders = {u, *graph[u]}

    assert secagg.unmaskable(graph, set(range(8)), 3)
    assert not secagg.unmaskable(graph, set(range(8)) - holders, 1)
    assert not secagg.unmaskable(graph, set(range(8)) - set(graph[u]), 2)
