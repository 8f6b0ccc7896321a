"""Compression on the parameter server (both directions) and on gossip (CHOCO-gossip), in
real process groups: the bytes measured are the compressed bytes and equal their formula,
and accuracy stays near the uncompressed run's (Stich et al. 2018; Koloskova et al. 2019)."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import cli, final_state, make_config, run_small, step_losses
from tests.integration.test_resume import assert_same_run, config

from distlab.api import run
from distlab.config_sections import CompressConfig
from distlab.runtime.launch import RunFailed
from distlab.transforms.chain import make_chain

pytestmark = pytest.mark.slow

MNIST = {"dataset": "mnist-sample", "model": "logreg", "epochs": 2}
# top-k at 0.5% with error feedback: 8 bytes per kept value, about 100x under float32
TOPK = {"kind": "topk", "ratio": 0.005, "error_feedback": True}


def assert_identical(a, b) -> None:
    assert step_losses(a) == step_losses(b) != []
    sa, sb = final_state(a), final_state(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("strategy", ["param-server", "gossip"])
def test_compress_none_is_the_default_bit_for_bit(tmp_path, strategy):
    default = run_small(tmp_path / "d", strategy=strategy, workers=2)
    none = run_small(tmp_path / "n", strategy=strategy, workers=2, compress={"kind": "none"})
    assert none.summary["compression_ratio"] is None
    assert_identical(default, none)


@pytest.fixture(scope="module")
def dense_ps(tmp_path_factory):
    return run_small(tmp_path_factory.mktemp("ps"), strategy="param-server", workers=2, **MNIST)


def assert_formula(summary: dict) -> None:
    for key in ("uplink_", "downlink_", "", "server_"):
        measured = summary[f"{key}bytes_per_step_measured"]
        assert measured == summary[f"{key}bytes_per_step_analytic"], key


def test_param_server_topk_uplink(tmp_path, dense_ps):
    s = run_small(tmp_path, strategy="param-server", workers=2, compress=TOPK, **MNIST).summary
    assert_formula(s)
    assert s["uplink_bytes_per_step_measured"] * 50 <= 4 * s["params"]
    # the reply is the model itself: 4 P and the version
    assert s["downlink_bytes_per_step_measured"] == 4 * s["params"] + 4
    assert s["final_accuracy"] >= dense_ps.summary["final_accuracy"] - 0.02


def test_param_server_topk_both_ways(tmp_path, dense_ps):
    compress = {**TOPK, "downlink": True}
    s = run_small(tmp_path, strategy="param-server", workers=2, compress=compress, **MNIST).summary
    assert_formula(s)
    dense = dense_ps.summary["bytes_per_step_measured"]
    assert s["bytes_per_step_measured"] * 50 <= dense
    assert s["downlink_bytes_per_step_measured"] * 50 <= 4 * s["params"]
    assert s["final_accuracy"] >= dense_ps.summary["final_accuracy"] - 0.03


def test_async_param_server_compressed(tmp_path):
    result = run_small(
        tmp_path,
        strategy={"name": "param-server", "mode": "async"},
        workers=2,
        compress={**TOPK, "downlink": True},
    )
    s = result.summary
    assert s["status"] == "completed"
    assert {e["worker"] for e in result.events if e["kind"] == "step" and e["rank"] == 0} == {1, 2}
    assert_formula(s)
    assert s["final_accuracy"] > 0.8


def test_param_server_compressed_both_ways_resumes_bit_for_bit(tmp_path):
    # the checkpoints hold the workers' error feedback and the server's copies of them
    fields = {"strategy": "param-server", "workers": 2, "compress": {**TOPK, "downlink": True}}
    full = run(config(tmp_path, "full", fields)).run_dir
    with pytest.raises(RunFailed, match="rank 1"):
        run(config(tmp_path, "cut", fields, fault={"rank": 1, "step": 25, "kind": "exit"}))
    cut = tmp_path / "runs" / "cut"
    run(config(tmp_path, "cut", fields), resume=cut)
    assert_same_run(full, cut, "step")


def gossip_run(path, **strategy):
    compress = strategy.pop("compress", {"kind": "none"})
    return run_small(
        path, strategy={"name": "gossip", **strategy}, workers=4, compress=compress, **MNIST
    )


@pytest.fixture(scope="module")
def dense_gossip(tmp_path_factory):
    return gossip_run(tmp_path_factory.mktemp("gossip"))


def test_choco_gossip_topk_near_dense_with_fewer_bytes(tmp_path, dense_gossip):
    s = gossip_run(tmp_path, compress={"kind": "topk", "ratio": 0.01}).summary
    dense = dense_gossip.summary
    assert s["mix_bytes_per_round_measured"] == s["mix_bytes_per_round_analytic"]
    assert s["bytes_per_round_measured"] == s["bytes_per_round_analytic"]
    assert s["mix_bytes_per_round_measured"] * 40 <= dense["mix_bytes_per_round_measured"]
    assert s["final_accuracy"] >= dense["final_accuracy"] - 0.02


def test_choco_with_an_exact_compressor_is_plain_gossip(tmp_path, dense_gossip):
    # top-k of every value is exact: the public copies are the models, and gamma 1 is D-PSGD
    exact = gossip_run(tmp_path, gamma=1.0, compress={"kind": "topk", "ratio": 1.0})
    # every value and its index (13 bits for logreg's 7850 values) travels
    chain = make_chain(CompressConfig(kind="topk", ratio=1.0), [(10, 784), (10,)], 0)
    assert exact.summary["mix_bytes_per_round_measured"] == pytest.approx(
        chain.payload_bytes
        / chain.dense_bytes
        * dense_gossip.summary["mix_bytes_per_round_measured"]
    )
    for key, value in final_state(dense_gossip).items():
        assert torch.allclose(final_state(exact)[key], value, atol=1e-5, rtol=0), key


@pytest.mark.parametrize(
    ("strategy", "compress", "words"),
    [
        ({"name": "gossip"}, {"kind": "majority"}, "compress.kind=majority on gossip"),
        ({"name": "gossip", "topology": "random-k"}, {"kind": "topk"}, "random-k"),
        ({"name": "gossip"}, {"kind": "topk", "error_feedback": True}, "error_feedback=false"),
        ({"name": "gossip", "gamma": 0.5}, {"kind": "none"}, "strategy.gamma applies"),
        ({"name": "param-server"}, {"kind": "majority", "downlink": True}, "downlink"),
    ],
)
def test_what_cannot_be_carried_is_refused(tmp_path, strategy, compress, words):
    with pytest.raises(ValueError, match=words):
        make_config(tmp_path, strategy=strategy, workers=4, compress=compress)


def test_cli_refuses_majority_on_gossip(tmp_path):
    out = tmp_path / "runs"
    args = ["run", "--strategy", "gossip", "--workers", "2", "--out-dir", str(out)]
    proc = cli(*args, "--set", "compress.kind=majority", cwd=tmp_path)
    assert proc.returncode == 2
    assert "compress.kind=majority on gossip" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
