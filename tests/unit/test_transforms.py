"""The compressors of the update seam and their chain: sizes on the wire against the papers'
counts, what each keeps of an update, error feedback's memory and checkpointed state."""

import io
import math

import numpy as np
import pytest
import torch

from distlab import config_sections
from distlab.config_sections import CompressConfig
from distlab.transforms import COMPRESSORS, compressor_class
from distlab.transforms.base import pack_bits, unpack_bits
from distlab.transforms.chain import Chain

# LeNet's parameters on MNIST (P = 44426).
LENET = [(6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 256), (120,), (84, 120), (84,)]
LENET += [(10, 84), (10,)]
KINDS = [*COMPRESSORS, ["topk", "fp16"], ["randk", "bf16"], ["qsgd", "fp16"], ["sign", "bf16"]]
KINDS += [["powersgd", "fp16"]]
STOCHASTIC = ["randk", "qsgd", "powersgd"]


def chain(kind, shapes=LENET, seed=0, **settings) -> Chain:
    return Chain(CompressConfig(kind=kind, **settings), shapes, seed)


def rows(n, p=44426, seed=0):
    return torch.randn(n, p, generator=torch.Generator().manual_seed(seed))


def test_registry_names_every_compressor_of_the_config():
    assert set(COMPRESSORS) == set(config_sections.COMPRESSORS) - {"none"}
    for name in COMPRESSORS:
        assert compressor_class(name).name == name


@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_payload_size_is_its_parts_and_the_papers_count(kind):
    c = chain(kind)
    x = rows(3)
    payload = c.encode(x, np.arange(3))
    assert payload.dtype == torch.uint8
    assert payload.shape == (3, c.payload_bytes)
    assert c.payload_bytes == sum(p.nbytes for p in c.layout)
    # Bits are packed into whole bytes: at most one byte of padding over the count.
    assert 0 <= c.payload_bytes - c.formula_bytes() < 1
    assert c.decode(payload).shape == (3, 44426)
    # In-process executors skip the bytes: same stream, same update
    assert torch.equal(c.decode(payload), chain(kind).roundtrip(x, np.arange(3)))
    assert c.payload_bytes < c.dense_bytes


@pytest.mark.parametrize(
    ("kind", "settings", "shapes", "low", "high"),
    [
        # 32-bit values and 16-bit indices (P < 2**16): 6 bytes a kept value
        ("topk", {"ratio": 0.01}, [(60000,)], 66.66, 66.67),
        ("randk", {"ratio": 0.01}, [(60000,)], 66.66, 66.67),
        (["topk", "fp16"], {"ratio": 0.01}, [(60000,)], 99.99, 100),
        # 2 (or 8) bits a value and a 32-bit norm per bucket of 512
        ("qsgd", {"levels": 1}, LENET, 15.5, 15.52),
        ("qsgd", {"levels": 127}, LENET, 3.96, 3.97),
        ("qsgd", {"levels": 1, "bucket": 10**6}, LENET, 15.99, 16.0),
        ("sign", {}, LENET, 31.97, 32.0),
        ("majority", {}, LENET, 31.99, 32.0),
        ("powersgd", {"rank": 2}, LENET, 10, 100),
        ("fp16", {}, LENET, 2, 2),
    ],
    ids=str,
)
def test_compression_ratio(kind, settings, shapes, low, high):
    c = chain(kind, shapes, **settings)
    assert low <= c.dense_bytes / c.payload_bytes <= high


def test_fp16_round_trip_is_exact_on_half_precision_values():
    x = rows(2, 1000).half().float()
    c = chain("fp16", [(1000,)])
    assert torch.equal(c.decode(c.encode(x, [0, 1])), x)


def test_bf16_round_trip_is_exact_on_bfloat16_values():
    x = (rows(2, 1000) * 1e20).bfloat16().float()  # past fp16's range, not bf16's
    c = chain("bf16", [(1000,)])
    assert torch.equal(c.decode(c.encode(x, [0, 1])), x)


def test_topk_keeps_exactly_the_k_largest():
    x = rows(4, 1000)
    out = chain("topk", [(1000,)], ratio=0.05).roundtrip(x, np.arange(4))
    for row, kept in zip(x, out, strict=True):
        top = set(torch.argsort(row.abs(), descending=True)[:50].tolist())
        assert set(torch.nonzero(kept).flatten().tolist()) == top
        assert torch.equal(kept[list(top)], row[list(top)])


@pytest.mark.parametrize("ratio", [0.1, 0.5])  # few of many drawn, or half the keys
def test_randk_draws_k_distinct_coordinates_uniformly_unscaled(ratio):
    x = rows(4000, 100) + 10  # no zeros: a kept value is never mistaken for a dropped one
    out = chain("randk", [(100,)], ratio=ratio).roundtrip(x, np.arange(4000))
    kept = out != 0
    assert (kept.sum(1) == round(100 * ratio)).all()
    assert torch.equal(out[kept], x[kept])
    # Each coordinate drawn with probability k / P in each of 4000 rows: within 5 sd
    sd = math.sqrt(4000 * ratio * (1 - ratio))
    assert (kept.sum(0) - 4000 * ratio).abs().max() < 5 * sd


def test_qsgd_is_unbiased_and_quantizes_to_its_levels():
    x = rows(1, 50)
    c = chain("qsgd", [(50,)], levels=1)
    out = c.roundtrip(x.repeat(4000, 1), np.zeros(4000, dtype=np.int64))
    norm = x.norm()
    # levels=1: every value is 0 or +-norm, with the input's sign where it is not 0
    assert torch.isclose(out.abs(), norm).logical_or(out == 0).all()
    assert (out * x >= 0).all()
    # per coordinate sd <= norm / 2 / sqrt(4000) ~ 0.06; rounding to nearest would miss by
    # up to norm / 2
    assert (out.mean(0) - x[0]).abs().max() < 0.3
    assert not torch.allclose(out[0], x[0], atol=0.3)


def test_qsgd_with_many_levels_is_close():
    x = rows(2, 1000)
    out = chain("qsgd", [(1000,)], levels=127).roundtrip(x, np.arange(2))
    assert ((out - x).abs() <= x.norm(dim=1, keepdim=True) / 127 + 1e-6).all()


def test_scaled_sign_is_the_mean_magnitude_times_the_sign():
    x = rows(3, 1001)
    out = chain("sign", [(1001,)]).roundtrip(x, np.arange(3))
    expected = x.abs().mean(1, keepdim=True) * torch.where(x < 0, -1.0, 1.0)
    assert torch.allclose(out, expected)


def test_majority_vote_aggregate_is_the_sign_of_the_votes():
    x = rows(3, 1000)
    c = chain("majority", [(1000,)])
    decoded = c.decode(c.encode(x, np.arange(3)))
    assert torch.equal(decoded, torch.where(x < 0, -1.0, 1.0))
    vote = c.aggregate(decoded.mean(0))
    # 3 voters never tie: each coordinate is the side with 2 or 3 votes
    assert torch.equal(vote, torch.where((x > 0).sum(0) >= 2, 1.0, -1.0))


def test_powersgd_reproduces_low_rank_matrices_and_biases():
    gen = torch.Generator().manual_seed(1)
    low_rank = torch.randn(2, 30, 2, generator=gen) @ torch.randn(2, 2, 40, generator=gen)
    bias = torch.randn(2, 7, generator=gen)
    x = torch.cat([low_rank.reshape(2, -1), bias], dim=1)
    c = chain("powersgd", [(30, 4, 10), (7,)], rank=2)
    assert torch.allclose(c.decode(c.encode(x, np.arange(2))), x, atol=1e-4)


def test_powersgd_warm_start_converges_to_the_best_rank_r():
    gen = torch.Generator().manual_seed(2)
    u, _ = torch.linalg.qr(torch.randn(50, 50, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(60, 50, generator=gen))
    matrix = u @ torch.diag(0.7 ** torch.arange(50.0)) @ v.T
    best = (matrix - u[:, :2] @ torch.diag(0.7 ** torch.arange(2.0)) @ v[:, :2].T).norm()
    c = chain("powersgd", [(50, 60)], rank=2)
    errors = [(c.roundtrip(matrix.reshape(1, -1), [4]).reshape(50, 60) - matrix).norm()]
    errors += [(c.roundtrip(matrix.reshape(1, -1), [4]).reshape(50, 60) - matrix).norm()]
    for _ in range(20):
        last = (c.roundtrip(matrix.reshape(1, -1), [4]).reshape(50, 60) - matrix).norm()
    assert errors[1] < errors[0]
    assert last == pytest.approx(float(best), rel=1e-3)
    assert c.head.seen.tolist() == [False] * 4 + [True]  # the warm start of sender 4 only


def test_rank_is_clipped_to_the_smaller_side():
    c = chain("powersgd", [(3, 100), (100, 2)], rank=4)
    assert c.payload_bytes == 4 * (3 * 103 + 2 * 102)


@pytest.mark.parametrize("kind", ["topk", "randk", "qsgd", "sign", "powersgd"])
def test_error_feedback_keeps_what_was_dropped(kind):
    c = chain(kind, error_feedback=True)
    senders = np.array([0, 2])
    total_in, total_sent = torch.zeros(2, 44426), torch.zeros(2, 44426)
    for step in range(4):
        x = rows(2, seed=step)
        before = c.memory[senders].clone() if c.memory is not None else 0
        sent = c.decode(c.encode(x, senders))
        assert torch.allclose(c.memory[senders], x + before - sent, atol=1e-5)
        total_in, total_sent = total_in + x, total_sent + sent
    assert torch.allclose(total_sent + c.memory[senders], total_in, atol=1e-4)
    assert c.memory[1].abs().sum() == 0  # a sender that sent nothing has no memory


@pytest.mark.parametrize("kind", STOCHASTIC + ["topk", ["qsgd", "fp16"]], ids=str)
def test_state_dict_round_trip_resumes_the_same_stream(kind):
    a = chain(kind, error_feedback=True, seed=3)
    a.encode(rows(2, seed=1), [0, 1])
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = chain(kind, error_feedback=True, seed=3)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    x = rows(2, seed=2)
    assert torch.equal(a.encode(x, [0, 1]), b.encode(x, [0, 1]))
    assert torch.equal(a.memory, b.memory)


@pytest.mark.parametrize("kind", STOCHASTIC)
def test_same_seed_same_payload(kind):
    x = rows(2)
    first = chain(kind, seed=5).encode(x, [0, 1])
    assert torch.equal(chain(kind, seed=5).encode(x, [0, 1]), first)
    assert not torch.equal(chain(kind, seed=6).encode(x, [0, 1]), first)


@pytest.mark.parametrize("bits", [1, 2, 3, 7, 8, 9, 16, 17, 33])
def test_pack_bits_round_trip(bits):
    gen = torch.Generator().manual_seed(bits)
    values = torch.randint(0, 2**bits, (3, 101), generator=gen)
    packed = pack_bits(values, bits)
    assert packed.shape == (3, math.ceil(101 * bits / 8))
    assert torch.equal(unpack_bits(packed, bits, 101), values)


def test_one_row_of_a_payload_decodes_alone():
    c = chain("qsgd")
    payload = c.encode(rows(2), [0, 1])
    assert torch.equal(c.decode(payload[1:]), c.decode(payload)[1:])


@pytest.mark.parametrize("kind", ["topk", "randk", ["topk", "fp16"], ["randk", "bf16"]], ids=str)
def test_sparse_residual_is_the_update_less_what_the_receiver_reads(kind):
    c = chain(kind, error_feedback=True)
    x = rows(3)
    sent = c.decode(c.encode(x, np.arange(3)))
    # the scattered residual equals the dense one, casts' rounding included
    assert torch.allclose(c.memory, x - sent, atol=1e-7)
    if kind in ("topk", "randk"):
        assert torch.equal(c.memory[sent != 0], torch.zeros(int((sent != 0).sum())))


def test_powersgd_matrices_of_other_sizes_and_ranks_in_one_qr():
    gen = torch.Generator().manual_seed(3)
    shapes = [(3, 100), (100, 2), (30, 40)]
    mats = [
        torch.randn(2, m, 2, generator=gen) @ torch.randn(2, 2, c, generator=gen)
        for m, c in [(3, 100), (100, 2), (30, 40)]
    ]
    x = torch.cat([m.reshape(2, -1) for m in mats], dim=1)
    c = chain("powersgd", shapes, rank=3)
    # ranks 3, 2 and 3: every rank-2 matrix comes back exactly, orthonormal factors each
    assert torch.allclose(c.decode(c.encode(x, np.arange(2))), x, atol=1e-4)
