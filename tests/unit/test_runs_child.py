"""runs/child.py: a child's outcome comes from its run's summary, its last stderr line only
where it wrote none; its events are followed as they grow; a child that ignores the stop
signal is killed after the grace period."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from distlab.runs.child import RunChild, last_line, read_summary, stop_all
from distlab.runs.directory import RunPaths


def child(tmp_path, code: str) -> RunChild:
    """A RunChild around a plain Python process (no run), its stderr in tmp_path/log."""
    log = tmp_path / "log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", code], stderr=err, start_new_session=True)
    return RunChild(proc, tmp_path / "run", log)


def test_the_outcome_is_the_summarys_status_and_error_whatever_the_stderr(tmp_path):
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir()
    paths.summary.write_text(json.dumps({"status": "failed", "error": "rank 1 failed: boom"}))
    done = child(tmp_path, "import sys; print('error: something else', file=sys.stderr)")
    done.proc.wait()

    outcome = done.outcome()

    assert (outcome.status, outcome.error) == ("failed", "rank 1 failed: boom")
    assert outcome.summary["error"] == "rank 1 failed: boom" and outcome.run_dir == paths.root


def test_a_child_that_wrote_no_summary_failed_with_its_last_stderr_line(tmp_path):
    done = child(tmp_path, "import sys; print('first', file=sys.stderr); print('last\\n', "
                           "file=sys.stderr); sys.exit(2)")  # fmt: skip
    done.proc.wait()

    outcome = done.outcome()

    assert (outcome.status, outcome.error, outcome.returncode) == ("failed", "last", 2)
    assert outcome.summary == {} and read_summary(tmp_path / "run") == {}
    assert last_line(tmp_path / "missing.log") is None


def test_a_completed_summary_from_a_child_that_exited_with_an_error_is_a_failure(tmp_path):
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir()
    paths.summary.write_text(json.dumps({"status": "completed"}))
    done = child(tmp_path, "import sys; sys.exit(1)")
    done.proc.wait()

    assert done.outcome().status == "failed"


def test_new_events_hands_on_each_ranks_appended_events_once(tmp_path):
    paths = RunPaths(tmp_path / "run")
    paths.events_dir.mkdir(parents=True)
    done = child(tmp_path, "pass")
    paths.rank_events(0).write_text(json.dumps({"kind": "eval", "rank": 0}) + "\n")
    paths.rank_events(1).write_text(json.dumps({"kind": "step", "rank": 1}) + '\n{"kind"')

    first, again = done.new_events(), done.new_events()
    with open(paths.rank_events(1), "a") as fh:
        fh.write(': "eval", "rank": 1}\n')

    assert [e["rank"] for e in first] == [0, 1] and again == []
    assert done.new_events() == [{"kind": "eval", "rank": 1}]
    done.proc.wait()


def test_a_child_that_ignores_the_signal_is_killed_after_the_grace(tmp_path):
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('ready', file=sys.stderr, flush=True)\n"
        "time.sleep(60)\n"
    )
    stubborn = child(tmp_path, code)
    while last_line(stubborn.log) != "ready":
        time.sleep(0.05)
    start = time.monotonic()

    stop_all([stubborn], signal.SIGINT, grace=0.5)

    assert stubborn.proc.returncode == -signal.SIGKILL
    assert time.monotonic() - start < 10
    assert not stubborn.running() and stubborn.stop() is False


# --- the same child as a Ray task (experiments/tune/remote.py): its outcome on the driver ------


def test_a_tasks_outcome_on_the_driver_is_the_runs_own_summary(tmp_path):
    from distlab.experiments.tune.remote import outcome_of

    paths = RunPaths(tmp_path / "cell")
    paths.root.mkdir()
    paths.summary.write_text(json.dumps({"status": "completed", "final_accuracy": 0.5}))
    done = {"status": "completed", "error": None, "seconds": 1.5, "returncode": 0,
            "node": "10.0.0.2", "host": "b"}  # fmt: skip

    outcome = outcome_of(done, paths.root)

    assert outcome.completed and outcome.seconds == 1.5 and outcome.returncode == 0
    assert outcome.summary["final_accuracy"] == 0.5


def test_a_task_lost_with_its_node_failed_with_one_line_or_its_runs_own_word(tmp_path):
    from distlab.experiments.tune.remote import failed_outcome

    lost = RuntimeError("The worker died\n  unexpectedly:   node 10.0.0.2 lost")
    outcome = failed_outcome(lost, tmp_path / "never-ran")
    assert (outcome.status, outcome.error) == (
        "failed",
        "The worker died unexpectedly: node 10.0.0.2 lost",
    )

    paths = RunPaths(tmp_path / "stopped")
    paths.root.mkdir()
    paths.summary.write_text(json.dumps({"status": "terminated", "error": "SIGTERM"}))
    outcome = failed_outcome(lost, paths.root)
    assert (outcome.status, outcome.error) == ("terminated", "SIGTERM")


def test_a_node_is_named_by_its_address_and_host_name():
    from distlab.experiments.tune.cluster import node_label

    assert node_label("10.77.0.2", "hostb") == "10.77.0.2 (hostb)"
    assert node_label("10.77.0.2", "10.77.0.2") == node_label("10.77.0.2", "") == "10.77.0.2"


def test_the_sweep_record_names_a_cells_node_only_where_it_ran_on_a_cluster(tmp_path):
    from distlab.experiments.sweep import Cell, CellResult, SweepPlan, write_record

    cells = (Cell("a", {}, {}, 1), Cell("b", {}, {}, 1))
    plan = SweepPlan("S", tmp_path, {}, cells)
    write_record(plan, {"a": CellResult(cells[0], "completed", 1.0, node="10.0.0.2 (b)"),
                        "b": CellResult(cells[1], "completed", 1.0)})  # fmt: skip

    record = json.loads((tmp_path / "sweep.json").read_text())
    assert record["cells"][0]["node"] == "10.0.0.2 (b)" and "node" not in record["cells"][1]
