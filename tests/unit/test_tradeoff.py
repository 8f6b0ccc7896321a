"""The trade-offs in the summary and the report: compression ratio, bytes measured, simulated
seconds and time to target on the simulated clock, the Pareto front, and tradeoff.png."""

from __future__ import annotations

import json
import struct

from distlab.config import build_config
from distlab.experiments.page import table_rows
from distlab.experiments.report import comparison_rows, console_columns, write_report
from distlab.experiments.tradeoff import (
    compressor_label,
    legend_labels,
    panels,
    pareto_front,
    sim_time_to_accuracy,
)
from distlab.summary import compress_summary, summarize
from distlab.summary import table_rows as summary_table_rows

PNG = b"\x89PNG\r\n\x1a\n"
DENSE = 4 * 1000


def compress_event(names, payload, feedback=True):
    return {
        "rank": 0, "kind": "phase", "phase": "compress", "seconds": 0.5, "compressors": names,
        "error_feedback": feedback, "payload_bytes": payload, "formula_bytes": float(payload),
        "dense_bytes": DENSE,
    }  # fmt: skip


def lead_events(accuracies, sim_step=None, compress=None):
    """A lead rank's events: start, train, a step and an eval per accuracy, end; steps and
    evals stamped with the simulated clock when `sim_step` (simulated seconds a step) is given."""
    events = [
        {"rank": 0, "kind": "phase", "phase": "start", "seconds": 0.1, "params": 1000},
        {"rank": 0, "kind": "phase", "phase": "train", "seconds": 1.0},
    ]
    if compress:
        events.append(compress)
    for i, acc in enumerate(accuracies, 1):
        sim = {"sim_seconds": round(i * sim_step, 3)} if sim_step else {}
        events.append(
            {"rank": 0, "kind": "step", "step": i, "seconds": 1.0 + i, "loss": 1.0 / i,
             "samples": 100, "duration": 0.5, **sim}
        )  # fmt: skip
        events.append(
            {"rank": 0, "kind": "eval", "step": i, "seconds": 1.1 + i, "accuracy": acc,
             "loss": 1.0 - acc, "duration": 0.05, **sim}
        )  # fmt: skip
    events.append({"rank": 0, "kind": "phase", "phase": "train_end", "seconds": 2.0 + i})
    return events


def test_summary_gives_the_compression_ratio_from_the_compress_event():
    from distlab.strategies import load_spec, spec_ref

    cfg = build_config(overrides=["strategy=allreduce", "workers=1", "compress.kind=topk"])
    spec = load_spec(spec_ref("allreduce"))
    events = lead_events([0.5, 0.8], compress=compress_event(["topk"], 80))

    summary = summarize(cfg, spec, events, 1, 3.0, "completed")

    assert summary["compression_ratio"] == 50.0  # 4000 dense bytes against 80 sent
    assert summary["compressors"] == ["topk"]
    rows = dict(summary_table_rows(spec))
    assert rows["compression ratio"] == "compression_ratio"
    assert rows["simulated seconds"] == "sim_seconds"


def test_a_run_that_compressed_nothing_has_a_null_ratio_not_zero_or_one():
    assert compress_summary(lead_events([0.5])) == {"compressors": None, "compression_ratio": None}
    broken = compress_event(["topk"], 0)  # a payload size the event cannot support
    assert compress_summary([broken])["compression_ratio"] is None


def fake_run(name, accuracies, total_bytes=None, sim_step=None, compress=None, status="completed"):
    """A run as load_runs returns it, with `total_bytes` measured over two ranks."""
    summary = {
        "status": status, "strategy": "allreduce", "dataset": "synthetic", "model": "mlp",
        "workers": 2, "processes": 2, "samples": 200, "train_seconds": 2.0,
        "final_accuracy": accuracies[-1],
        "compressors": compress["compressors"] if compress else None,
        "compression_ratio": DENSE / compress["payload_bytes"] if compress else None,
    }  # fmt: skip
    if total_bytes is not None:
        half = {"bytes_sent": total_bytes // 4, "bytes_recv": total_bytes // 4}
        summary["bytes_per_rank"] = {"0": half, "1": half}
    feedback = bool(compress and compress["error_feedback"])
    if sim_step:
        summary["sim_seconds"] = round(len(accuracies) * sim_step, 3)
    return {
        "name": name, "summary": summary,
        "config": {"compress": {"ratio": 0.02, "error_feedback": feedback}},
        "events": lead_events(accuracies, sim_step, compress),
    }  # fmt: skip


def test_report_rows_carry_ratio_bytes_simulated_seconds_and_time_to_target():
    dense = fake_run("dense", [0.5, 0.9], total_bytes=8000, sim_step=2.0)
    topk = fake_run("topk", [0.6, 0.7, 0.85], 800, 1.5, compress_event(["topk"], 80))
    old = fake_run("old", [0.9])  # a run without bytes or a simulated clock

    rows = comparison_rows([dense, topk, old], target=0.8)

    assert [r["compression_ratio"] for r in rows] == [None, 50.0, None]
    assert [r["bytes_measured"] for r in rows] == [8000, 800, None]
    assert [r["sim_seconds"] for r in rows] == [4.0, 4.5, None]
    # the simulated clock at the first eval at or above 0.8, beside the wall clock's figure
    assert [r["sim_seconds_to_target"] for r in rows] == [4.0, 4.5, None]
    assert [r["seconds_to_target"] for r in rows] == [2.1, 3.1, 1.1]
    assert rows[1]["compressors"] == "topk 0.02 +ef"
    columns, cells = table_rows(rows)
    for column in ("compression_ratio", "bytes_measured", "sim_seconds", "sim_seconds_to_target"):
        assert column in columns
    assert cells[2][columns.index("compression_ratio")] == "-"
    assert set(console_columns(rows)) >= {"compression_ratio", "sim_seconds_to_target"}
    assert "compression_ratio" not in console_columns(comparison_rows([old]))


def test_sim_time_to_accuracy_is_none_when_never_reached_or_not_stamped():
    events = lead_events([0.3, 0.6], sim_step=3.0)
    assert sim_time_to_accuracy(events, 0.5) == 6.0
    assert sim_time_to_accuracy(events, 0.7) is None
    assert sim_time_to_accuracy(lead_events([0.9]), 0.5) is None


def test_a_dominated_run_is_off_the_pareto_front():
    # (bytes, accuracy): c has more bytes and less accuracy than b; d ties b exactly
    points = [(1000, 0.90), (100, 0.88), (500, 0.85), (100, 0.88), (10, 0.70)]

    front = pareto_front(points)

    assert front == [4, 1, 3, 0]
    assert 2 not in front
    assert pareto_front([(5, 0.5)]) == [0]


def test_labels_name_the_chain_its_setting_and_error_feedback():
    run = fake_run("chain", [0.8], compress=compress_event(["topk", "fp16"], 40, feedback=False))
    assert compressor_label(run) == "topk 0.02 > fp16"
    assert compressor_label(fake_run("dense", [0.8])) == "dense"
    assert legend_labels([fake_run("a", [0.8]), run]) == ["a: dense", "chain: topk 0.02 > fp16"]
    assert legend_labels([fake_run("a", [0.8]), fake_run("b", [0.8])]) == ["a", "b"]


def write_run(root, run):
    """A run directory as a finished run leaves it: config, summary and merged events."""
    path = root / run["name"]
    path.mkdir(parents=True)
    config = {"strategy": {"name": "allreduce"}, "dataset": "synthetic", "name": run["name"]}
    config["compress"] = {**run["config"]["compress"], "kind": run["summary"]["compressors"]}
    (path / "config.json").write_text(json.dumps(config))
    (path / "summary.json").write_text(json.dumps({**run["summary"], "lead_rank": 0}))
    lines = [json.dumps(e) for e in run["events"]]
    (path / "events.jsonl").write_text("\n".join(lines) + "\n")
    return path


def png_size(path):
    data = path.read_bytes()
    assert data.startswith(PNG)
    return struct.unpack(">II", data[16:24])


def test_tradeoff_png_has_a_panel_for_bytes_and_one_for_simulated_time(tmp_path):
    runs = [
        fake_run("dense", [0.5, 0.9], 8000, 2.0),
        fake_run("topk-ef", [0.6, 0.88], 800, 1.5, compress_event(["topk"], 80)),
        fake_run("topk", [0.4, 0.7], 800, 1.5, compress_event(["topk"], 80, feedback=False)),
    ]
    dirs = [write_run(tmp_path / "runs", r) for r in runs]

    rows = write_report(dirs, tmp_path / "both", target=0.8)
    for run in runs:
        for event in run["events"]:
            event.pop("sim_seconds", None)
        run["summary"].pop("sim_seconds")
    plain = [write_run(tmp_path / "plain", r) for r in runs]
    write_report(plain, tmp_path / "one-panel")

    assert [r["sim_seconds_to_target"] for r in rows] == [4.0, 3.0, None]
    two_wide, _ = png_size(tmp_path / "both" / "tradeoff.png")
    one_wide, _ = png_size(tmp_path / "one-panel" / "tradeoff.png")
    assert two_wide > 1.7 * one_wide  # two panels side by side, then the bytes panel alone
    assert "tradeoff.png" in (tmp_path / "both" / "report.md").read_text()
    assert "sim_seconds_to_target" in (tmp_path / "both" / "report.md").read_text()


def test_no_bytes_and_no_simulated_clock_means_no_tradeoff_figure(tmp_path):
    run = fake_run("old", [0.5, 0.9])
    run["summary"]["processes"] = 1  # one process hands its collectives to itself
    path = write_run(tmp_path / "runs", run)

    rows = write_report([path], tmp_path / "rep")

    assert panels([run], rows) == []
    assert not (tmp_path / "rep" / "tradeoff.png").exists()
    assert (tmp_path / "rep" / "curves.png").is_file()


def test_a_run_that_measures_no_bytes_stands_at_its_formula_total_on_the_bytes_panel(tmp_path):
    measured = fake_run("dense", [0.5, 0.9], total_bytes=8000)
    in_process = fake_run("vectorized", [0.6, 0.8])  # clients trained in one process
    in_process["summary"].update(processes=1, bytes_total_logical=1200)
    nothing = fake_run("old", [0.9])

    rows = comparison_rows([measured, in_process, nothing], target=None)

    assert [r["bytes_measured"] for r in rows] == [8000, None, None]
    assert [(r["bytes_spent"], r["bytes_source"]) for r in rows] == [
        (8000, "measured"), (1200, "formula"), (None, None),
    ]  # fmt: skip
    assert panels([in_process], rows[1:2]) == ["bytes"]
    write_report([write_run(tmp_path / "runs", in_process)], tmp_path / "rep")
    assert (tmp_path / "rep" / "tradeoff.png").exists()


def test_dense_runs_that_spent_the_same_bytes_get_no_bytes_panel():
    runs = [fake_run("sync", [0.5, 0.8], 8000, 2.0), fake_run("deadline", [0.4, 0.7], 8000, 1.0)]
    rows = comparison_rows(runs, target=None)
    assert panels(runs, rows) == []  # every run keeps a clock; none chose a system
    runs[1]["config"]["system"] = {"speed": "lognormal", "deadline": 0.5}

    assert panels(runs, rows) == ["time"]
    runs[1]["summary"]["bytes_per_rank"]["0"]["bytes_sent"] = 1000  # now they differ
    assert panels(runs, comparison_rows(runs, target=None)) == ["bytes", "time"]
