"""FedAvg with compressed client updates: the vectorized executor's batched round trip, the
processes executor's compressed wire (measured bytes), the downlink, and the refusals."""

from __future__ import annotations

import pytest
import torch
from tests.cli.test_run_errors import assert_one_line_error, run_main
from tests.conftest import make_config
from tests.integration.test_resume import assert_same_run

from distlab.api import run
from distlab.config import validate_config
from distlab.runtime.launch import RunFailed

# 10 clients of mnist-sample, all of them every round: error feedback sees every client's
# memory each round (Stich et al. 2018's setting).
FED = {"name": "fedavg", "clients": 10, "rounds": 20, "executor": "vectorized"}
BASE = {
    "dataset": "mnist-sample",
    "model": "logreg",
    "seed": 1,
    "batch_size": 32,
    "optimizer": {"lr": 0.1},
    "eval_every": 20,
}
# top-k 1% with its values in fp16: 6 bytes per kept value against 400 per 100 dense.
TOPK = {"kind": ["topk", "fp16"], "ratio": 0.01}


def fedavg(tmp_path, name, compress=None, **strategy):
    cfg = {**BASE, "strategy": {**FED, **strategy}, "out_dir": str(tmp_path), "name": name}
    if compress is not None:
        cfg["compress"] = compress
    if strategy.get("executor") == "processes":
        cfg["workers"] = 2
    return run(cfg)


def final_model(result) -> dict:
    return torch.load(result.run_dir / "model.pt", weights_only=True)


def compress_event(result) -> dict:
    return next(e for e in result.events if e.get("phase") == "compress")


def server_bytes(result) -> dict:
    return result.summary["bytes_per_rank"]["0"]


def assert_same_models(a, b, atol=0.0):
    ma, mb = final_model(a), final_model(b)
    for key in ma:
        if atol:
            torch.testing.assert_close(ma[key], mb[key], rtol=0, atol=atol)
        else:
            assert torch.equal(ma[key], mb[key]), key


def test_topk_with_error_feedback_is_near_dense_with_50x_fewer_bytes(tmp_path):
    dense = fedavg(tmp_path, "dense")
    ef = fedavg(tmp_path, "ef", {**TOPK, "error_feedback": True})
    plain = fedavg(tmp_path, "plain", TOPK)

    acc = {r.config["name"]: r.summary["final_accuracy"] for r in (dense, ef, plain)}
    assert acc["ef"] >= acc["dense"] - 0.02
    assert acc["plain"] < acc["ef"] - 0.03  # without the memory, clearly worse
    event = compress_event(ef)
    assert event["dense_bytes"] / event["payload_bytes"] >= 50
    assert ef.summary["compression_ratio"] >= 50
    # logical bytes: the model down dense, the payload up, for each of the 10 clients
    logical = ef.summary["bytes_per_round_logical"]
    assert logical == 10 * (event["dense_bytes"] + event["payload_bytes"])
    assert dense.summary["bytes_per_round_logical"] == 10 * 2 * event["dense_bytes"]


def test_none_set_explicitly_is_the_default_bit_for_bit(tmp_path):
    default = fedavg(tmp_path, "default", rounds=3)
    none = fedavg(tmp_path, "none", {"kind": "none"}, rounds=3)

    assert_same_models(default, none)
    assert not any(e.get("phase") == "compress" for e in none.events)
    assert none.summary.get("compression_ratio") is None


def test_downlink_sends_the_payload_both_ways_and_still_learns(tmp_path):
    down = fedavg(tmp_path, "down", {**TOPK, "error_feedback": True, "downlink": True})

    event = compress_event(down)
    assert down.summary["bytes_per_round_logical"] == 10 * 2 * event["payload_bytes"]
    assert down.summary["final_accuracy"] > 0.7


def test_a_diverged_client_is_rejected_as_without_compression(tmp_path):
    # a learning rate that makes the clients' training diverge: their deltas are not finite,
    # and top-k must not hide that by sending finite coordinates of them
    strategy = {**FED, "rounds": 1, "max_retries": 0}
    cfg = {**BASE, "optimizer": {"lr": 1e6}, "strategy": strategy, "compress": TOPK}
    with pytest.raises(RunFailed, match=r"rejected: 0 \(NaN/Inf\)"):
        run(cfg | {"out_dir": str(tmp_path), "name": "huge"})


@pytest.mark.slow
def test_processes_measure_compressed_bytes_and_match_vectorized(tmp_path):
    dense = fedavg(tmp_path, "pdense", executor="processes", rounds=5)
    none = fedavg(tmp_path, "pnone", {"kind": "none"}, executor="processes", rounds=5)
    ef = {**TOPK, "error_feedback": True}
    sent = fedavg(tmp_path, "ptopk", ef, executor="processes", rounds=5)
    same = fedavg(tmp_path, "vtopk", ef, rounds=5)

    assert_same_models(dense, none)
    event = compress_event(sent)
    # each client answers its payload and two float32 figures (sample count, loss)
    per_client_dense, per_client = event["dense_bytes"] + 8, event["payload_bytes"] + 8
    recv_dense, recv = server_bytes(dense)["bytes_recv"], server_bytes(sent)["bytes_recv"]
    assert recv * per_client_dense == pytest.approx(recv_dense * per_client, rel=0.01)
    assert recv_dense / recv > 40
    assert sent.summary["bytes_total_measured"] < dense.summary["bytes_total_measured"] / 4
    assert_same_models(sent, same, atol=1e-4)


@pytest.mark.slow
def test_processes_downlink_matches_vectorized_and_sends_less(tmp_path):
    ef = {**TOPK, "error_feedback": True, "downlink": True}
    # 3 clients a round of 10 on 2 hosts: a host misses rounds and catches up on payloads
    down = fedavg(tmp_path, "pdown", ef, executor="processes", rounds=6, clients_per_round=3)
    same = fedavg(tmp_path, "vdown", ef, rounds=6, clients_per_round=3)
    up_only = {**TOPK, "error_feedback": True}
    up = fedavg(tmp_path, "pup", up_only, executor="processes", rounds=6, clients_per_round=3)

    assert_same_models(down, same, atol=1e-4)
    assert server_bytes(down)["bytes_sent"] < server_bytes(up)["bytes_sent"] / 10


@pytest.mark.parametrize(
    ("sets", "parts"),
    [
        (
            {"strategy": {"executor": "serial"}, "compress": {"kind": "topk"}},
            ["compress.kind=topk is not carried by executor serial", "raw float32"],
        ),
        (
            {"strategy": {"executor": "flower"}, "compress": {"kind": "fp16"}},
            ["compress.kind=fp16 is not carried by executor flower", "ArrayRecord"],
        ),
        (
            {"compress": {"kind": "powersgd"}},
            ["compress.kind=powersgd is not carried by fedavg", "warm start"],
        ),
    ],
)
def test_a_compressor_an_executor_cannot_carry_is_refused(sets, parts):
    cfg = {**BASE, "strategy": {**FED, **sets.get("strategy", {})}, "compress": sets["compress"]}
    with pytest.raises(ValueError) as info:
        validate_config(cfg)
    message = str(info.value)
    assert "\n" not in message.strip()
    for part in parts:
        assert part in message


def test_the_cli_refuses_compression_on_serial_in_one_line(tmp_path, capsys):
    args = ["--strategy", "fedavg", "--clients", "2", "--dataset", "synthetic"]
    args += ["--set", "strategy.executor=serial", "--set", "compress.kind=topk"]

    code, out, stderr = run_main(capsys, "run", *args, "--out-dir", str(tmp_path / "r"))

    assert (code, out) == (2, "")
    assert_one_line_error(stderr, "compress.kind=topk is not carried by executor serial")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_compressed_run_resumes_with_its_error_feedback_to_the_same_rounds(tmp_path, workers):
    compress = {**TOPK, "error_feedback": True, "downlink": True}
    strategy = {"name": "fedavg", "clients": 6, "clients_per_round": 3, "rounds": 6}
    strategy["executor"] = "processes" if workers > 1 else "vectorized"
    base = {"strategy": strategy, "checkpoint": {"every": 2}, "eval_every": 3}
    base |= {"workers": workers, "compress": compress}
    full = run(make_config(tmp_path, name="full", **base)).run_dir
    with pytest.raises(RunFailed):  # the server dies in round 5, after round 4's checkpoint
        run(make_config(tmp_path, name="cut", fault={"rank": 0, "step": 5}, **base))
    cut = tmp_path / "runs" / "cut"

    run(make_config(tmp_path, name="cut", **base), resume=cut)

    assert_same_run(full, cut, "round")
