"""Bad attack settings: one line naming the value and the allowed ones, exit 2, nothing
written."""

from __future__ import annotations

import pytest
from tests.cli.test_run_errors import TINY, assert_one_line_error, run_main

from distlab.strategies import STRATEGIES, get_spec

FED = ["--strategy", "fedavg", "--clients", "10", "--rounds", "1"]
# a strategy that does not carry attacks, whichever carry them by now
UNARMED = next(name for name in STRATEGIES if "attack" not in get_spec(name).threats)


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        (FED + ["--set", "attack.kind=poison"], ["unknown attack 'poison'", "sign-flip, gaussian"]),
        (FED + ["--set", "attack.kind=alie", "--set", "attack.fraction=1"], ["attack.fraction"]),
        (
            FED + ["--set", "attack.kind=sign-flip", "--set", "attack.fraction=0.04"],
            ["attack.fraction=0.04 makes no attacker among 10 clients", "smallest fraction is 0.1"],
        ),
        (
            FED + ["--set", "attack.kind=backdoor", "--set", "attack.target=99"],
            ["attack.target=99 is not a class of dataset synthetic", "classes 0 to"],
        ),
        (
            FED + ["--set", "attack.kind=label-flip", "--set", "strategy.executor=flower"],
            ["attack.kind=label-flip poisons", "flower", "vectorized, sequential, processes"],
        ),
        (
            FED + ["--set", "attack.kind=backdoor", "--set", "attack.start=3"],
            ["attack.start=3", "attack.start must be 1"],
        ),
        (
            ["--strategy", UNARMED, "--set", "attack.kind=sign-flip"],
            [f"attack.kind=sign-flip is not carried by strategy {UNARMED}", "fedavg"],
        ),
    ],
)  # fmt: skip
def test_a_bad_attack_setting_is_one_line(tmp_path, capsys, args, parts):
    code, out, stderr = run_main(capsys, "run", *TINY, *args, "--out-dir", str(tmp_path / "runs"))

    assert (code, out) == (2, "")
    assert_one_line_error(stderr, *parts)
    assert list(tmp_path.iterdir()) == []
