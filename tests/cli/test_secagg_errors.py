"""Bad secure-aggregation settings: one line naming the value and what is allowed, exit 2,
no traceback and no run directory, before any process starts."""

from __future__ import annotations

import pytest

from distlab.cli import main

BASE = ["run", "--dataset", "synthetic", "--model", "logreg", "-q"]
FEDAVG = [*BASE, "--strategy", "fedavg", "--rounds", "1", "--clients", "10"]
FEDAVG += ["--set", "secagg.enabled=true"]


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        (["--set", "secagg.threshold=11"], ["secagg.threshold (11)", "clients per round (10)"]),
        (
            ["--set", "strategy.clients_per_round=4", "--set", "secagg.threshold=5"],
            ["secagg.threshold (5)", "clients per round (4)"],
        ),
        (["--set", "secagg.neighbours=10"], ["secagg.neighbours (10)", "< clients per round"]),
        (["--set", "strategy.aggregator=median"], ["aggregator median", "aggregator=mean"]),
        (["--set", "compress.kind=topk"], ["compress.kind=topk", "cannot be compressed"]),
        (["--set", "privacy.mode=central"], ["privacy.mode=central", "no update to clip"]),
        (["--set", "secagg.bits=30"], ["secagg.bits (30)", "2**32"]),
    ],
)
def test_bad_secagg_settings_are_one_line_errors(tmp_path, capsys, args, parts):
    with pytest.raises(SystemExit) as info:
        main([*FEDAVG, *args, "--out-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err

    assert info.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    for part in parts:
        assert part in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("strategy", ["local-sgd", "allreduce"])
def test_secagg_on_a_strategy_other_than_fedavg_is_refused(tmp_path, capsys, strategy):
    args = [*BASE, "--strategy", strategy, "--epochs", "1", "--set", "secagg.enabled=true"]
    with pytest.raises(SystemExit) as info:
        main([*args, "--out-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err

    assert info.value.code == 2 and err.count("\n") == 1
    assert "secagg.enabled=true is not carried by strategy" in err and "fedavg" in err
    assert not (tmp_path / "runs").exists()
