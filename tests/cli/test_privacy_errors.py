"""Bad central-privacy input to `distlab run`: one line on stderr, exit 2, no traceback,
nothing written, before any process starts."""

from __future__ import annotations

import pytest
from tests.cli.test_run_errors import assert_one_line_error, run_main
from tests.conftest import cli

FEDAVG = ["--dataset", "synthetic", "--model", "logreg", "--strategy", "fedavg", "--clients", "4"]
CENTRAL = [*FEDAVG, "--set", "privacy.mode=central"]


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        (["--set", "privacy.delta=0"], ["privacy.delta must be > 0.0 (got 0)"]),
        (["--set", "privacy.delta=1"], ["privacy.delta must be < 1.0 (got 1)"]),
        (["--set", "privacy.noise=-1"], ["privacy.noise must be >= 0.0 (got -1)"]),
        (["--set", "privacy.clip=0"], ["privacy.clip must be > 0.0 (got 0)"]),
        (["--set", "privacy.clip=-2"], ["privacy.clip must be > 0.0 (got -2)"]),
        (
            ["--set", "privacy.clip=null", "--set", "privacy.noise=1"],
            ["privacy.clip=None leaves the sensitivity unbounded", "privacy.clip > 0"],
        ),
        (
            ["--set", "privacy.target_epsilon=0.0000001", "--rounds", "50"],
            ["privacy.target_epsilon=1e-07 is out of reach", "50 steps", "raise target_epsilon"],
        ),
        (
            ["--set", "strategy.aggregator=median"],
            ["privacy.mode=central needs strategy.aggregator=mean", "'median'"],
        ),
        (
            ["--set", "privacy.adaptive=true", "--set", "privacy.count_noise=0.1"],
            ["privacy.count_noise (0.1) is too small for privacy.noise (1)", "2 * count_noise"],
        ),
    ],
)
def test_bad_central_privacy_is_one_line_and_writes_nothing(tmp_path, capsys, args, parts):
    out = tmp_path / "runs"

    code, stdout, stderr = run_main(capsys, "run", "--out-dir", str(out), *CENTRAL, *args)

    assert code == 2 and stdout == ""
    assert_one_line_error(stderr, *parts)
    assert not out.exists()


def test_central_privacy_on_a_strategy_that_does_not_carry_it(tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["--dataset", "synthetic", "--model", "logreg", "--strategy", "gossip"]

    code, _, stderr = run_main(
        capsys, "run", "--out-dir", str(out), *args, "--set", "privacy.mode=central"
    )

    assert code == 2
    assert_one_line_error(
        stderr, "privacy.mode=central is not carried by strategy gossip", "fedavg"
    )
    assert not out.exists()


def test_the_command_refuses_an_unreachable_target_in_one_line(tmp_path):
    proc = cli(
        "run", "--out-dir", "runs", *CENTRAL, "--set", "privacy.target_epsilon=1e-9", cwd=tmp_path
    )

    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_line_error(proc.stderr, "privacy.target_epsilon=1e-09 is out of reach")
    assert list(tmp_path.iterdir()) == []
