"""Bad defense settings: one line naming the value and the bound or the allowed ones, exit 2,
nothing written."""

from __future__ import annotations

import pytest
from tests.cli.test_run_errors import TINY, assert_one_line_error, run_main

FED = ["--strategy", "fedavg", "--clients", "10", "--rounds", "1"]


@pytest.mark.parametrize(
    ("sets", "parts"),
    [
        (
            ["strategy.aggregator=bulyan-mean"],
            ["strategy.aggregator", "'bulyan-mean'", "bulyan", "centered-clip", "norm-bound"],
        ),
        (["strategy.aggregator=norm-bound", "strategy.norm_bound=0"], ["norm_bound", "> 0"]),
        (["strategy.aggregator=norm-bound", "strategy.norm_bound=-1"], ["norm_bound", "(got -1)"]),
        (["strategy.aggregator=centered-clip", "strategy.clip_radius=0"], ["clip_radius", "> 0"]),
        (["strategy.clip_iters=0"], ["clip_iters", ">= 1"]),
        (
            ["strategy.aggregator=krum", "strategy.krum_f=4"],
            ["aggregator krum needs clients per round > 2 * krum_f + 2 (got 10, f=4)"],
        ),
        (
            ["strategy.aggregator=bulyan", "strategy.krum_f=2"],
            ["aggregator bulyan needs clients per round >= 4 * krum_f + 3 (got 10, f=2)"],
        ),
        (
            ["strategy.aggregator=krum", "attack.kind=sign-flip", "attack.fraction=0.4"],
            ["attack.fraction 0.4 puts f = 4 attackers among the 10 clients per round",
             "krum needs clients per round > 2f + 2 (at most f = 3, attack.fraction <= 0.30)"],
        ),
        (
            ["strategy.aggregator=bulyan", "attack.kind=alie", "attack.fraction=0.2"],
            ["attack.fraction 0.2 puts f = 2 attackers among the 10 clients per round",
             "bulyan needs clients per round >= 4f + 3 (at most f = 1, attack.fraction <= 0.10)"],
        ),
    ],
)  # fmt: skip
def test_a_bad_defense_setting_is_one_line(tmp_path, capsys, sets, parts):
    args = [arg for s in sets for arg in ("--set", s)]

    code, out, stderr = run_main(
        capsys, "run", *TINY, *FED, "--out-dir", str(tmp_path / "runs"), *args
    )

    assert (code, out) == (2, "")
    assert_one_line_error(stderr, *parts)
    assert list(tmp_path.iterdir()) == []


def test_an_attack_within_the_bound_passes_the_check(tmp_path, capsys):
    from distlab.config import validate_config

    cfg = validate_config(
        {
            "strategy": {"name": "fedavg", "clients": 11, "aggregator": "bulyan", "krum_f": 2},
            "attack": {"kind": "sign-flip", "fraction": 0.2},
        }
    )

    assert cfg.strategy.aggregator == "bulyan"
