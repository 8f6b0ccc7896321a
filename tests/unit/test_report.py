"""Run comparison: speedup, efficiency, time to target, and the files the report writes."""

from __future__ import annotations

import json

from tests.conftest import run_small

from distlab.report import comparison_rows, markdown_table, smooth, time_to_accuracy, write_report


def fake_run(name, workers, processes, seconds, evals):
    summary = {
        "strategy": "allreduce",
        "workers": workers,
        "processes": processes,
        "train_seconds": seconds,
        "final_accuracy": evals[-1][1],
    }
    events = [{"kind": "phase", "phase": "train", "seconds": 1.0, "rank": 0}]
    events += [{"kind": "eval", "seconds": t, "accuracy": a, "rank": 0} for t, a in evals]
    return {"name": name, "summary": summary, "events": events}


def test_speedup_and_efficiency_are_against_the_one_process_run():
    runs = [fake_run("one", 1, 1, 8.0, [(3.0, 0.9)]), fake_run("four", 4, 4, 2.5, [(2.0, 0.9)])]
    rows = comparison_rows(runs)
    assert rows[0]["speedup"] == 1.0 and rows[0]["efficiency"] == 1.0
    assert rows[1]["speedup"] == 3.2  # 8 / 2.5
    assert rows[1]["efficiency"] == 0.8  # 3.2 / 4


def test_no_baseline_means_no_speedup():
    rows = comparison_rows([fake_run("two", 2, 2, 4.0, [(2.0, 0.5)])])
    assert rows[0]["speedup"] is None and rows[0]["efficiency"] is None


def test_time_to_accuracy_counts_from_the_start_of_training():
    run = fake_run("r", 1, 1, 5.0, [(2.0, 0.5), (3.5, 0.91), (4.0, 0.95)])
    assert time_to_accuracy(run["events"], 0.9) == 2.5  # 3.5 - 1.0
    assert time_to_accuracy(run["events"], 0.99) is None


def test_smooth_is_a_running_mean():
    assert list(smooth([1, 2, 3, 4], window=2)) == [1.0, 1.5, 2.5, 3.5]


def test_markdown_table_shows_missing_values_as_dashes():
    text = markdown_table([{"a": 1, "b": None}])
    assert text.splitlines() == ["| a | b |", "| --- | --- |", "| 1 | - |"]


def test_report_from_real_runs_writes_plots_and_tables(tmp_path):
    one = run_small(tmp_path / "1", strategy="centralized")
    two = run_small(tmp_path / "2", strategy="allreduce", workers=2)
    rows = write_report([one.run_dir, two.run_dir], tmp_path / "rep", target=0.5)
    assert (tmp_path / "rep" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "rep" / "bytes.png").exists()
    saved = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert saved == rows
    assert rows[1]["speedup"] == round(
        one.summary["train_seconds"] / two.summary["train_seconds"], 3
    )
    assert rows[1]["bytes_per_step_measured"] == two.summary["bytes_per_step_measured"]
