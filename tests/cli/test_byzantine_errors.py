"""Bad Byzantine settings on allreduce and param-server: one line naming the value and the
allowed ones, exit 2, nothing written."""

from __future__ import annotations

import pytest
from tests.cli.test_run_errors import TINY, assert_one_line_error, run_main


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        (
            [
                "--strategy",
                "allreduce",
                "--workers",
                "4",
                "--set",
                "attack.kind=sign-flip",
                "--set",
                "attack.fraction=0.1",
            ],
            ["attack.fraction=0.1 of 4 workers draws no attacker", "allowed: fraction > 0.125"],
        ),
        (
            [
                "--strategy",
                "allreduce",
                "--workers",
                "4",
                "--set",
                "strategy.aggregator=krum",
                "--set",
                "strategy.krum_f=1",
            ],
            ["aggregator krum needs workers >= 5", "got --workers 4, krum_f=1"],
        ),
        (
            ["--strategy", "param-server", "--workers", "2", "--set", "strategy.aggregator=avg"],
            ["unknown aggregator 'avg'", "allowed: mean, median, trimmed-mean, krum"],
        ),
        (
            [
                "--strategy",
                "param-server",
                "--workers",
                "4",
                "--set",
                "attack.kind=sign-flip",
                "--set",
                "compress.kind=topk",
            ],
            ["attack.kind=sign-flip with compress.kind=topk is not carried by param-server"],
        ),
    ],
)
def test_a_bad_byzantine_setting_is_one_line(tmp_path, capsys, args, parts):
    code, out, stderr = run_main(capsys, "run", *TINY, "--out-dir", str(tmp_path / "runs"), *args)

    assert (code, out) == (2, "")
    assert_one_line_error(stderr, *parts)
    assert list(tmp_path.iterdir()) == []
