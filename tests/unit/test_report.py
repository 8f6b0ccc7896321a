"""Run comparison: fair baselines, speedup, efficiency, time to target, unknown figures, and
the files the report writes."""

from __future__ import annotations

import json
import struct

import pytest
from tests.conftest import run_small

from distlab.experiments.baseline import NO_BASELINE
from distlab.experiments.curves import panel_layout, plot_curves, smooth
from distlab.experiments.page import table_rows
from distlab.experiments.report import comparison_rows, load_runs, time_to_accuracy, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def fake_run(name, workers, processes, seconds, evals, **summary):
    """A run as load_runs returns it: one-epoch synthetic MLP work unless `summary` says
    otherwise."""
    base = {
        "status": "completed",
        "strategy": "allreduce",
        "dataset": "synthetic",
        "model": "mlp",
        "samples": 2000,
        "batch_size_meaning": "global (split across workers)",
        "workers": workers,
        "processes": processes,
        "train_seconds": seconds,
        "final_accuracy": evals[-1][1] if evals else None,
    }
    events = [{"kind": "phase", "phase": "train", "seconds": 1.0, "rank": 0}]
    events += [
        {"kind": "eval", "seconds": t, "accuracy": a, "step": i, "rank": 0}
        for i, (t, a) in enumerate(evals, 1)
    ]
    return {"name": name, "summary": {**base, **summary}, "events": events}


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG)
    return struct.unpack(">II", data[16:24])


def test_speedup_and_efficiency_are_against_the_one_process_run():
    runs = [fake_run("one", 1, 1, 8.0, [(3.0, 0.9)]), fake_run("four", 4, 4, 2.5, [(2.0, 0.9)])]

    rows = comparison_rows(runs)

    assert rows[0]["speedup"] == 1.0 and rows[0]["efficiency"] == 1.0
    assert rows[1]["speedup"] == 3.2  # 8 / 2.5
    assert rows[1]["efficiency"] == 0.8  # 3.2 / 4
    assert [r["baseline"] for r in rows] == ["one", "one"]
    assert [r["speedup_note"] for r in rows] == [None, None]


def test_t1_is_the_median_of_the_fair_baselines_repeats():
    runs = [
        fake_run("slow", 1, 1, 10.0, [(3.0, 0.9)]),
        fake_run("fast", 1, 1, 6.0, [(3.0, 0.9)]),
        fake_run("mid", 1, 1, 7.0, [(3.0, 0.9)]),
        fake_run("two", 2, 2, 3.5, [(2.0, 0.9)]),
    ]

    rows = comparison_rows(runs)

    assert rows[3]["baseline"] == "slow (median of 3)"
    assert (rows[3]["baseline_seconds"], rows[3]["speedup"]) == (7.0, 2.0)


def test_no_baseline_means_no_speedup_and_a_note():
    rows = comparison_rows([fake_run("two", 2, 2, 4.0, [(2.0, 0.5)])])

    assert rows[0]["speedup"] is None and rows[0]["efficiency"] is None
    assert rows[0]["speedup_note"].startswith(NO_BASELINE)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dataset", "digits"),
        ("model", "lenet"),
        ("samples", 6000),  # 3 epochs against 1: the issue's 4.28x "speedup"
        ("batch_size_meaning", "per worker"),
    ],
)
def test_a_one_process_run_that_did_other_work_is_no_baseline(key, value):
    single = fake_run("one", 1, 1, 8.0, [(3.0, 0.9)], strategy="centralized", **{key: value})
    ddp = fake_run("ddp", 2, 2, 2.0, [(2.0, 0.9)], strategy="ddp")

    rows = comparison_rows([single, ddp], baseline="centralized")

    assert rows[1]["speedup"] is None and rows[1]["efficiency"] is None
    assert rows[1]["baseline"] is None
    assert rows[1]["speedup_note"].startswith(NO_BASELINE)
    assert rows[0]["speedup"] == 1.0  # the single run is still its own baseline


@pytest.mark.parametrize("status", ["failed", "interrupted"])
def test_unfinished_runs_are_marked_and_left_out_of_speedup(status):
    broken_single = fake_run("one-" + status, 1, 1, 1.0, [(1.5, 0.5)], status=status)
    good = fake_run("two", 2, 2, 4.0, [(2.0, 0.9)])
    broken = fake_run("four-" + status, 4, 4, 1.0, [(2.0, 0.9)], status=status)

    rows = comparison_rows([broken_single, good, broken])

    assert [r["status"] for r in rows] == [status, "completed", status]
    assert [r["speedup"] for r in rows] == [None, None, None]
    assert rows[0]["speedup_note"] == f"run {status}: left out of speedup"
    assert rows[1]["speedup_note"].startswith(NO_BASELINE)  # the failed single is no baseline
    assert rows[2]["speedup_note"] == f"run {status}: left out of speedup"


def test_unknown_figures_stay_unknown():
    bare = {"name": "bare", "summary": {"status": "completed"}, "events": []}
    nulls = fake_run("nulls", None, None, None, [], samples=None, dataset=None)
    nulls["events"].append({"kind": "eval", "seconds": None, "accuracy": None, "rank": 0})
    single = fake_run("one", 1, 1, 8.0, [(3.0, 0.9)], samples=None)

    rows = comparison_rows([bare, nulls, single], target=0.5)

    assert all(r["speedup"] is None and r["efficiency"] is None for r in rows)
    assert rows[0]["strategy"] is None and rows[0]["workers"] is None
    assert rows[0]["speedup_note"] == "train seconds unknown: no speedup"
    assert rows[2]["speedup_note"] == "samples unknown: no comparable baseline"
    assert [r["seconds_to_target"] for r in rows] == [None, None, 2.0]
    columns, cells = table_rows(rows)
    assert cells[0][: columns.index("workers") + 1][:2] == ["bare", "completed"]
    assert cells[0][columns.index("workers")] == "-"


def test_a_baseline_without_train_seconds_is_named_as_the_reason():
    single = fake_run("one", 1, 1, None, [(3.0, 0.9)])
    two = fake_run("two", 2, 2, 4.0, [(2.0, 0.9)])

    rows = comparison_rows([single, two])

    assert rows[1]["speedup"] is None
    assert rows[1]["speedup_note"] == "the comparable one-process run has no train seconds"


def test_time_to_accuracy_counts_from_the_start_of_training():
    run = fake_run("r", 1, 1, 5.0, [(2.0, 0.5), (3.5, 0.91), (4.0, 0.95)])

    assert time_to_accuracy(run["events"], 0.9) == 2.5  # 3.5 - 1.0
    assert time_to_accuracy(run["events"], 0.99) is None


def test_smooth_is_a_running_mean():
    assert list(smooth([1, 2, 3, 4], window=2)) == [1.0, 1.5, 2.5, 3.5]


def test_report_tables_show_missing_values_as_dashes():
    columns, cells = table_rows([{"run": "a", "workers": None, "speedup": 1.5}])

    # an empty column is left out, but the baseline column is always there
    assert columns == ["run", "baseline", "speedup"] and cells == [["a", "-", "1.5"]]


def test_curves_of_runs_with_unknown_figures_still_draw(tmp_path):
    bare = {"name": "bare", "summary": {}, "events": [{"kind": "step", "loss": None}]}
    evals = fake_run("evals", 1, 1, 1.0, [(2.0, 0.5), (3.0, 0.7)])

    path = plot_curves([bare, evals], tmp_path / "curves.png")

    assert path.read_bytes().startswith(PNG)


def test_report_from_real_runs_writes_plots_and_tables(tmp_path):
    one = run_small(tmp_path / "1", strategy="centralized", threads=1)
    two = run_small(tmp_path / "2", strategy="allreduce", workers=2, threads=1)

    rows = write_report(
        [one.run_dir, two.run_dir], tmp_path / "rep", target=0.5, baseline="centralized"
    )

    assert (tmp_path / "rep" / "curves.png").read_bytes().startswith(PNG)
    assert (tmp_path / "rep" / "communication.png").read_bytes().startswith(PNG)
    assert (tmp_path / "rep" / "speedup.png").read_bytes().startswith(PNG)
    assert "| speedup |" in (tmp_path / "rep" / "report.md").read_text()
    saved = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert saved == rows
    assert rows[1]["baseline"] == one.run_dir.name
    assert rows[1]["speedup"] == round(
        one.summary["train_seconds"] / two.summary["train_seconds"], 3
    )
    assert rows[1]["bytes_per_step_measured"] == two.summary["bytes_per_step_measured"]


def test_steps_and_rounds_get_their_own_panels(tmp_path):
    steps = run_small(tmp_path / "s", strategy="centralized")
    rounds = run_small(tmp_path / "r", strategy={"name": "fedavg", "clients": 2, "rounds": 2})
    both = load_runs([steps.run_dir, rounds.run_dir])

    layouts = [panel_layout(both[:1]), panel_layout(both[1:]), panel_layout(both)]
    one_row = png_size(plot_curves(both[:1], tmp_path / "steps.png"))
    two_rows = png_size(plot_curves(both, tmp_path / "both.png"))

    assert layouts == [
        [["loss-step", "acc-step", "time"]],
        [["loss-round", "acc-round", "time"]],
        [["loss-step", "acc-step", "time"], ["loss-round", "acc-round", "time"]],
    ]
    assert one_row[0] == two_rows[0] and two_rows[1] > 1.5 * one_row[1]
    # A federated run is never its one-process centralized neighbour's baseline.
    rows = comparison_rows(both)
    assert [r["baseline"] for r in rows] == [steps.run_dir.name, rounds.run_dir.name]


def test_events_are_those_of_the_lead_rank_named_in_the_summary(tmp_path):
    result = run_small(tmp_path, strategy="centralized")
    summary = {**result.summary, "lead_rank": 3}
    (result.run_dir / "summary.json").write_text(json.dumps(summary))
    lines = [json.dumps({**e, "rank": 3}) for e in result.events]
    (result.run_dir / "events.jsonl").write_text("\n".join(lines) + "\n")

    [run] = load_runs([result.run_dir])

    assert len(run["events"]) == len(result.events)
    assert time_to_accuracy(run["events"], 0.01) is not None


def test_a_baseline_is_the_runs_own_strategy_and_seed_and_allows_uneven_shares():
    runs = [
        fake_run("ar1-s0", 1, 1, 10.0, [], seed=0),
        fake_run("ar1-s1", 1, 1, 12.0, [], seed=1),
        fake_run("c1", 1, 1, 5.0, [], strategy="centralized", seed=1),
        # three workers round their shares up: 2,006 samples is the same work within 1%
        fake_run("ar3-s1", 3, 3, 6.0, [], seed=1, samples=2006),
        fake_run("ar3-far", 3, 3, 6.0, [], seed=1, samples=2100),
    ]

    rows = {r["run"]: r for r in comparison_rows(runs)}

    assert rows["ar3-s1"]["baseline"] == "ar1-s1"  # not the faster centralized, not seed 0
    assert rows["ar3-s1"]["speedup"] == 2.0 and rows["ar3-s1"]["efficiency"] == 0.667
    assert rows["ar3-far"]["baseline"] is None
    assert rows["ar3-far"]["speedup_note"].startswith(NO_BASELINE)


# --- speedups you can trust -------------------------------------------------------------------


def machine(threads=1, cores=2, others=0.05, steal=0.0):
    return {
        "environment": {
            "threads_per_process": threads,
            "cores": cores,
            "load_start": 2.5,  # the minute before (a sweep's last cell): recorded, not judged
            "load_end": 2.6,
            "other_cores": others,
            "steal_fraction": steal,
        },
        "time_per_unit": {"unit": "step", "count": 100, "median": 0.02, "p90": 0.025},
    }


def test_a_baseline_with_other_threads_per_process_is_refused_and_said():
    single = fake_run("one", 1, 1, 8.0, [], **machine(threads=2))
    two = fake_run("two", 2, 2, 0.6, [], **machine(threads=1))

    rows = comparison_rows([single, two])

    assert rows[1]["speedup"] is None and rows[1]["baseline"] is None
    assert "used 2 torch threads per process and this run 1" in rows[1]["speedup_note"]
    assert "--set threads=N" in rows[1]["speedup_note"]


def test_the_issues_busy_baseline_is_flagged_with_its_reasons():
    # 47 of 125 steps took 0.27-0.32 s against a 0.02 s median: 14x "speedup" on 2 cores
    busy = machine(others=1.3)
    busy["time_per_unit"] = {"unit": "step", "count": 125, "median": 0.02, "p90": 0.3}
    single = fake_run("one", 1, 1, 8.4, [], **busy)
    two = fake_run("two", 2, 2, 0.6, [], **machine())

    rows = comparison_rows([single, two])

    assert rows[1]["speedup"] == 14.0 and rows[1]["efficiency"] == 7.0
    assert rows[0]["disturbed"] and not rows[1]["disturbed"]
    assert "step time p90 0.3 s is 15.0x the median" in rows[0]["flags"]
    assert "other programs kept 1.3 of the 2 cores busy while it ran" in rows[0]["flags"]
    assert "baseline one disturbed" in rows[1]["flags"]
    assert "efficiency 7 is above 1" in rows[1]["flags"]
    assert rows[0]["flagged"] == "disturbed"
    assert rows[1]["flagged"] == "baseline disturbed, above ideal"


@pytest.mark.parametrize(
    ("processes", "change", "said"),
    [
        (1, {"others": 1.2}, "other programs kept 1.2 of the 2 cores busy"),
        (2, {"others": 0.4}, "other programs kept 0.4 of the 2 cores busy"),
        (1, {"steal": 0.2}, "20% of CPU time stolen"),
    ],
)
def test_other_programs_beyond_the_free_cores_and_stolen_time_disturb_a_run(
    processes, change, said
):
    run = fake_run("one", 1, processes, 8.0, [], **machine(**change))

    [row] = comparison_rows([run])

    assert row["disturbed"] and said in row["flags"]


@pytest.mark.parametrize(("processes", "others"), [(1, 0.9), (2, 0.15)])
def test_other_programs_on_the_cores_a_run_leaves_free_do_not_disturb_it(processes, others):
    run = fake_run("one", 1, processes, 8.0, [], **machine(others=others))

    [row] = comparison_rows([run])

    assert not row["disturbed"] and row["flags"] is None


def test_a_quiet_run_at_ideal_is_not_flagged():
    rows = comparison_rows(
        [fake_run("one", 1, 1, 8.0, [], **machine()), fake_run("two", 2, 2, 4.0, [], **machine())]
    )

    assert [r["flags"] for r in rows] == [None, None]
    assert rows[1]["efficiency"] == 1.0


def test_speedup_never_crosses_strategies_unless_asked():
    central = fake_run("c1", 1, 1, 6.0, [], strategy="centralized")
    ps1 = fake_run("ps1", 1, 2, 9.0, [], strategy="param-server")
    ps2 = fake_run("ps2", 2, 3, 5.0, [], strategy="param-server")

    plain = {r["run"]: r for r in comparison_rows([central, ps1, ps2])}
    asked = {r["run"]: r for r in comparison_rows([central, ps1, ps2], baseline="centralized")}

    assert plain["ps1"]["speedup"] is None and plain["ps2"]["speedup"] is None
    assert "of strategy param-server" in plain["ps1"]["speedup_note"]
    assert "--baseline STRATEGY" in plain["ps1"]["speedup_note"]
    assert (asked["ps1"]["baseline"], asked["ps2"]["speedup"]) == ("c1", 1.2)


def test_repeats_give_the_median_and_spread(tmp_path):
    from distlab.experiments.report import repeat_keys, repeat_rows

    runs = [
        fake_run(f"one_r{i}", 1, 1, t, [(1.0, 0.9)]) for i, t in enumerate([8.0, 9.0, 10.0], 1)
    ] + [fake_run(f"two_r{i}", 2, 2, t, [(1.0, 0.9)]) for i, t in enumerate([4.0, 4.5, 6.0], 1)]
    for run in runs:
        run["config"] = {"workers": run["summary"]["workers"], "name": run["name"]}

    rows = comparison_rows(runs)
    groups = repeat_rows(rows, repeat_keys(runs))

    assert [g["run"] for g in groups] == ["one", "two"] and groups[1]["runs"] == 3
    assert groups[1]["speedup"] == {"median": 2.0, "min": 1.5, "max": 2.25}  # 9 / (6, 4.5, 4)
    assert groups[1]["train_seconds"] == {"median": 4.5, "min": 4.0, "max": 6.0}
    assert groups[0]["speedup"]["median"] == 1.0


def test_report_table_has_the_baseline_and_a_page_that_does_not_overflow(tmp_path):
    one = run_small(tmp_path / "1", strategy="centralized", threads=1)
    two = run_small(tmp_path / "2", strategy="allreduce", workers=2, threads=1)

    write_report([one.run_dir, two.run_dir], tmp_path / "rep", baseline="centralized")

    markdown = (tmp_path / "rep" / "report.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| run"))
    assert "| baseline |" in header and "| threads |" in header
    page = (tmp_path / "rep" / "report.html").read_text()
    assert '<div class="scroll"><table id="runs">' in page and "overflow-x: auto" in page
