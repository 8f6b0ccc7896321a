"""Bad compress.* and system.* values: one line naming the value and the allowed ones, exit 2,
nothing written."""

from __future__ import annotations

import pytest
from tests.cli.test_run_errors import TINY, assert_one_line_error, run_main
from tests.conftest import cli


@pytest.mark.parametrize(
    ("sets", "parts"),
    [
        (
            ["compress.kind=topkk"],
            ["unknown compressor 'topkk'", "allowed: none, fp16, bf16, topk"],
        ),
        (["compress.kind=[fp16, topk]"], ["chain", "must be one compressor followed by casts"]),
        (["compress.kind=[]"], ["compress.kind must name at least one compressor"]),
        (["compress.ratio=0"], ["compress.ratio must be > 0.0 (got 0)"]),
        (["compress.ratio=1.5"], ["compress.ratio must be <= 1.0 (got 1.5)"]),
        (["compress.levels=0"], ["compress.levels must be >= 1 (got 0)"]),
        (["compress.rank=0"], ["compress.rank must be >= 1 (got 0)"]),
        (["compress.speed=2"], ["unknown config key 'compress.speed'", "allowed: kind, ratio"]),
        (["system.deadline=0"], ["system.deadline must be > 0.0 (got 0)"]),
        (["system.deadline=-3"], ["system.deadline must be > 0.0 (got -3)"]),
        (["system.speed=gamma"], ["system.speed must be one of", "lognormal", "(got 'gamma')"]),
        (["system.availability=0"], ["system.availability must be > 0.0 (got 0)"]),
        (["system.low=3", "system.high=2"], ["system.low (3.0) must be <= system.high (2.0)"]),
        (["system.stragglers=wait"], ["system.stragglers must be one of drop or partial"]),
    ],
)
def test_a_bad_compress_or_system_value_is_one_line(tmp_path, capsys, sets, parts):
    args = [arg for s in sets for arg in ("--set", s)]

    code, out, stderr = run_main(capsys, "run", *TINY, "--out-dir", str(tmp_path / "runs"), *args)

    assert (code, out) == (2, "")
    assert_one_line_error(stderr, *parts)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("trace", "parts"),
    [
        (None, ["system.trace", "cannot be read: No such file or directory"]),
        ("client,speed\n0,1\n", ["must be a CSV with columns client, speed, bandwidth"]),
        ("client,speed,bandwidth\n0,1,1e6\n7,2,1e6\n", ["line 3: unknown client 7", "0..3"]),
        ("client,speed,bandwidth\nx,1,1e6\n", ["line 2: client must be an integer", "'x'"]),
        ("client,speed,bandwidth\n0,-1,1e6\n", ["line 2: speed and bandwidth must be > 0"]),
        ("client,speed,bandwidth,windows\n0,1,1e6,5-2\n", ["line 2: windows must be START-END"]),
    ],
)
def test_a_bad_trace_file_is_one_line_before_anything_starts(tmp_path, capsys, trace, parts):
    path = tmp_path / "trace.csv"
    if trace is not None:
        path.write_text(trace)
    fed = ["--strategy", "fedavg", "--clients", "4", "--rounds", "1"]

    code, _, stderr = run_main(
        capsys, "run", *TINY, *fed, "--out-dir", str(tmp_path / "runs"), "--set",
        f"system.trace={path}",
    )  # fmt: skip

    assert code == 2
    assert_one_line_error(stderr, *parts)
    assert not (tmp_path / "runs").exists()


def test_the_real_command_refuses_an_unknown_compressor_and_writes_nothing(tmp_path):
    proc = cli("run", *TINY, "--out-dir", "runs", "--set", "compress.kind=top-k", cwd=tmp_path)

    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_line_error(proc.stderr, "unknown compressor 'top-k'", "topk")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("strategy", "why"),
    [
        (["--strategy", "centralized"], "one process sends nothing to compress"),
        (["--strategy", "hogwild", "--workers", "2"], "update one model in shared memory"),
        (["--strategy", "distill", "--workers", "2"], "soft labels (logits)"),
        (["--strategy", "pipeline", "--workers", "2"], "activations and their gradients"),
    ],
)
def test_a_strategy_that_sends_no_updates_refuses_a_compressor(tmp_path, capsys, strategy, why):
    code, out, stderr = run_main(
        capsys, "run", *TINY, *strategy, "--out-dir", str(tmp_path / "runs"),
        "--set", "compress.kind=topk",
    )  # fmt: skip

    assert (code, out) == (2, "")
    assert_one_line_error(stderr, "compress.kind=topk is not carried by strategy", why)
    assert list(tmp_path.iterdir()) == []
