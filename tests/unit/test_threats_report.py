"""The report's privacy and robustness figures: accuracy against epsilon (privacy.png) and
accuracy and attack success against the fraction of attackers (robustness.png), from run
directories shaped as a sweep leaves them; the table's privacy and attack columns."""

from __future__ import annotations

import json

import pytest

from distlab.experiments.page import table_rows
from distlab.experiments.report import comparison_rows, console_columns, load_runs, write_report
from distlab.experiments.threats import (
    NO_DP,
    line_labels,
    panel_slots,
    plot_privacy,
    plot_robustness,
    privacy_lines,
    robustness_panels,
)

PNG = b"\x89PNG\r\n\x1a\n"


def make_run(
    name, accuracy, *, mode="none", noise=1.0, epsilon=None, kind="none", fraction=0.2,
    aggregator="mean", success=None, algorithm="fedavg", seed=0,
):  # fmt: skip
    """A fedavg run as load_runs returns it: its config, summary and lead events."""
    config = {
        "name": name, "seed": seed, "dataset": "mnist-sample", "model": "logreg",
        "strategy": {"name": "fedavg", "clients": 100, "clients_per_round": 10,
                     "algorithm": algorithm, "aggregator": aggregator},
        "privacy": {"mode": mode, "noise": noise, "clip": 1.0, "delta": 1e-5},
        "attack": {"kind": kind, "fraction": fraction, "start": 1},
    }  # fmt: skip
    summary = {
        "status": "failed" if accuracy is None else "completed", "strategy": "fedavg",
        "dataset": "mnist-sample", "workers": 1,
        "samples": 1000, "train_seconds": 2.0, "final_accuracy": accuracy, "lead_rank": 0,
        "privacy": mode, "epsilon": epsilon, "delta": 1e-5 if mode != "none" else None,
        "attack": kind, "attackers": [3, 7] if kind != "none" else None,
        "attack_success": success,
    }  # fmt: skip
    events = [
        {"rank": 0, "kind": "phase", "phase": "train", "seconds": 0.5},
        {"rank": 0, "kind": "eval", "round": 1, "seconds": 1.0, "accuracy": accuracy,
         "loss": None if accuracy is None else 1 - accuracy, "attack_success": success},
    ]  # fmt: skip
    return {"name": name, "config": config, "summary": summary, "events": events}


def write_run(root, run):
    """A run directory as a finished run leaves it: config, summary and merged events."""
    path = root / run["name"]
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(run["config"]))
    (path / "summary.json").write_text(json.dumps(run["summary"]))
    (path / "events.jsonl").write_text("\n".join(json.dumps(e) for e in run["events"]) + "\n")
    return path


def privacy_sweep():
    """DP-FedAvg at four noise multipliers (noise 0: no finite epsilon), two seeds at z=1,
    the same with FedAdam at one noise, and FedAvg without privacy."""
    dp = {"mode": "central"}
    return [
        make_run("z0.3", 0.88, noise=0.3, epsilon=40.0, **dp),
        make_run("z1.0", 0.70, noise=1.0, epsilon=2.0, **dp),
        make_run("z1.0_s1", 0.74, noise=1.0, epsilon=2.0, seed=1, **dp),
        make_run("z0.6", 0.80, noise=0.6, epsilon=8.0, **dp),
        make_run("z0", 0.90, noise=0.0, epsilon=None, **dp),
        make_run("adam-z0.6", 0.83, noise=0.6, epsilon=8.0, algorithm="fedadam", **dp),
        make_run("plain", 0.91),
    ]


def test_privacy_lines_a_line_per_setting_points_by_epsilon_and_no_dp_at_the_edge():
    lines = privacy_lines(privacy_sweep())

    central = "fedavg, privacy.mode=central, strategy.algorithm=fedavg"
    assert set(lines) == {
        central,
        "fedavg, privacy.mode=central, strategy.algorithm=fedadam",
        "fedavg, privacy.mode=none, strategy.algorithm=fedavg",
    }
    # increasing epsilon; the two seeds at z=1 are one point (their median); noise 0 has no
    # finite epsilon and stands with the runs without privacy, last
    assert lines[central] == [
        {"label": "z=1", "epsilon": 2.0, "accuracy": pytest.approx(0.72)},
        {"label": "z=0.6", "epsilon": 8.0, "accuracy": 0.80},
        {"label": "z=0.3", "epsilon": 40.0, "accuracy": 0.88},
        {"label": "z=0", "epsilon": None, "accuracy": 0.90},
    ]
    assert lines["fedavg, privacy.mode=none, strategy.algorithm=fedavg"] == [
        {"label": NO_DP, "epsilon": None, "accuracy": 0.91}
    ]


def test_an_infinite_epsilon_counts_as_none_and_failed_runs_are_left_off():
    runs = [
        make_run("a", 0.8, mode="central", noise=0.5, epsilon=float("inf")),
        make_run("b", 0.7, mode="central", noise=1.0, epsilon=3.0),
        make_run("c", None, mode="central", noise=2.0, epsilon=1.0),
    ]
    (points,) = privacy_lines(runs).values()
    assert [(p["label"], p["epsilon"]) for p in points] == [("z=1", 3.0), ("z=0.5", None)]
    assert [r["epsilon"] for r in comparison_rows(runs)] == [None, 3.0, 1.0]


def attack_sweep():
    """Sign-flip at 10% and 20% and the backdoor at 20% against mean and median, and a
    clean run of each aggregator."""
    runs = []
    for agg, clean, flip1, flip2, back, hit in (
        ("mean", 0.90, 0.40, 0.10, 0.88, 0.95),
        ("median", 0.89, 0.88, 0.86, 0.87, 0.30),
    ):
        runs += [
            make_run(f"{agg}-clean", clean, aggregator=agg),
            make_run(f"{agg}-flip-0.1", flip1, kind="sign-flip", fraction=0.1, aggregator=agg),
            make_run(f"{agg}-flip-0.2", flip2, kind="sign-flip", fraction=0.2, aggregator=agg),
            make_run(f"{agg}-back", back, kind="backdoor", aggregator=agg, success=hit),
        ]
    return runs


def test_robustness_panels_a_line_per_aggregator_clean_runs_at_fraction_zero():
    panels = robustness_panels(attack_sweep())

    assert list(panels) == ["sign-flip", "backdoor"]  # in the order of the attacks' list
    assert panels["sign-flip"] == {
        "mean": [(0.0, 0.90, None), (0.1, 0.40, None), (0.2, 0.10, None)],
        "median": [(0.0, 0.89, None), (0.1, 0.88, None), (0.2, 0.86, None)],
    }
    assert panels["backdoor"] == {
        "mean": [(0.0, 0.90, None), (0.2, 0.88, 0.95)],
        "median": [(0.0, 0.89, None), (0.2, 0.87, 0.30)],
    }
    # a success panel only beside the backdoor, the only kind that measured one
    assert panel_slots(panels) == [
        ("acc", "sign-flip"), None, ("acc", "backdoor"), ("hit", "backdoor")
    ]  # fmt: skip


def test_lines_name_other_settings_only_when_the_runs_differ_in_them():
    runs = attack_sweep()[:2]
    assert line_labels(runs) == ["mean", "mean"]
    runs.append(make_run("adam", 0.5, kind="sign-flip", algorithm="fedadam"))
    assert line_labels(runs) == [
        "mean (fedavg, strategy.algorithm=fedavg)",
        "mean (fedavg, strategy.algorithm=fedavg)",
        "mean (fedavg, strategy.algorithm=fedadam)",
    ]


def test_rows_carry_epsilon_attack_fraction_aggregator_and_success():
    rows = comparison_rows(attack_sweep()[:4])

    assert [r["attack"] for r in rows] == ["none", "sign-flip", "sign-flip", "backdoor"]
    assert [r["attack_fraction"] for r in rows] == [0.0, 0.1, 0.2, 0.2]
    assert [r["aggregator"] for r in rows] == ["mean"] * 4
    assert [r["attack_success"] for r in rows] == [None, None, None, 0.95]
    assert [r["epsilon"] for r in rows] == [None] * 4
    columns, _ = table_rows(rows)
    assert {"attack", "attack_fraction", "aggregator", "attack_success"} <= set(columns)
    assert "epsilon" not in columns  # no run was private
    assert set(console_columns(rows)) >= {"attack_fraction", "attack_success"}
    # a plain report: no attack, one aggregator, no privacy -> none of these columns
    plain = comparison_rows([make_run("a", 0.9), make_run("b", 0.8, seed=1)])
    assert not {"epsilon", "attack", "attack_fraction", "aggregator"} & set(table_rows(plain)[0])


def test_report_draws_privacy_png_for_private_runs_and_robustness_png_for_attacked_ones(
    tmp_path,
):
    private = [write_run(tmp_path / "privacy", r) for r in privacy_sweep()]
    attacked = [write_run(tmp_path / "attacks", r) for r in attack_sweep()]

    write_report(private, tmp_path / "p")
    write_report(attacked, tmp_path / "a")

    assert (tmp_path / "p" / "privacy.png").read_bytes().startswith(PNG)
    assert not (tmp_path / "p" / "robustness.png").exists()
    assert (tmp_path / "a" / "robustness.png").read_bytes().startswith(PNG)
    assert not (tmp_path / "a" / "privacy.png").exists()
    assert "privacy.png" in (tmp_path / "p" / "report.md").read_text()
    page = (tmp_path / "a" / "report.md").read_text()
    assert "robustness.png" in page and "attack_success" in page
    # what the figures were drawn from is what the run directories hold
    assert robustness_panels(load_runs(attacked)) == robustness_panels(attack_sweep())


def test_no_private_or_attacked_run_means_neither_figure(tmp_path):
    runs = load_runs([write_run(tmp_path / "runs", make_run("plain", 0.9))])
    assert plot_privacy(runs, tmp_path / "privacy.png") is None
    assert plot_robustness(runs, tmp_path / "robustness.png") is None
    assert not list(tmp_path.glob("*.png"))
