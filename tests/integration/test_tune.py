"""`distlab tune` on real Ray: a grid of 8 allreduce configs on mnist-sample under ASHA
(a bad lr stopped early, the best config run again to the same accuracy), every file and
line of a search agreeing with the trials' run directories (stopped and interrupted trials
included), a Ray head started here joined with --address, and bad input refused in one line
before Ray starts."""

from __future__ import annotations

import csv
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from tests.conftest import assert_no_orphans, cli

from distlab.cli.display import format_number

pytest.importorskip("ray", reason="distlab tune needs the ray package: pip install 'distlab[tune]'")

# 125 steps of 32 (mnist-sample's 4,000 training images), an eval every 25: 5 evals.
BASE = {
    "strategy": "allreduce",
    "dataset": "mnist-sample",
    "model": "lenet",
    "workers": 1,
    "epochs": 1,
    "batch_size": 32,
    "eval_every": 25,
}
BAD_LR = 1.0e-5  # the model barely moves: chance accuracy at every eval


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def read_rows(out: Path) -> list[dict]:
    with (out / "results.csv").open() as handle:
        return list(csv.DictReader(handle))


def lead_evals(run_dir: Path) -> int:
    """Eval events of the run's lead rank, from its merged events."""
    summary = json.loads((run_dir / "summary.json").read_text())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return sum(e["kind"] == "eval" and e["rank"] == summary["lead_rank"] for e in events)


def ours(out: Path) -> list[int]:
    """Processes whose command line names the search directory: the trials' runs."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if str(out) in " ".join(proc.info["cmdline"] or []):
            found.append(proc.info["pid"])
    return found


def test_acceptance_grid_of_8_under_asha_stops_the_bad_lr_and_best_yaml_reproduces(tmp_path):
    base = write(tmp_path / "base.yaml", BASE)
    space = write(
        tmp_path / "space.yaml",
        {"optimizer.lr": {"grid": [0.1, 0.05, 0.02, BAD_LR]}, "batch_size": {"grid": [32, 64]}},
    )
    out = tmp_path / "DIR"

    done = cli(
        "tune", "--config", str(base), "--space", str(space), "--trials", "8",
        "--scheduler", "asha", "--out", str(out), timeout=400,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("results.csv", "results.md", "best.yaml", "metric.png"):
        assert (out / name).is_file(), name
    rows = read_rows(out)
    assert len(rows) == 8
    grid = {(float(r["optimizer.lr"]), int(r["batch_size"])) for r in rows}
    assert grid == {(lr, b) for lr in (0.1, 0.05, 0.02, BAD_LR) for b in (32, 64)}
    for row in rows:  # each trial is a normal run directory holding the trial's values
        config = json.loads((out / "trials" / row["trial"] / "config.json").read_text())
        assert config["optimizer"]["lr"] == float(row["optimizer.lr"])
        assert config["batch_size"] == int(row["batch_size"]) and config["threads"] == 1
    completed = [r for r in rows if r["status"] == "completed"]
    assert completed
    for row in completed:  # final value = the run's own summary
        summary = json.loads((out / "trials" / row["trial"] / "summary.json").read_text())
        assert float(row["accuracy"]) == summary["final_accuracy"]
    # ASHA stopped the bad lr after fewer evals than a whole run reports (125 / 25 = 5).
    bad = [r for r in rows if float(r["optimizer.lr"]) == BAD_LR]
    assert any(r["status"] == "stopped" and int(r["evals"]) < 5 for r in bad), bad
    assert "stopped" in done.stderr and "best trials" in done.stdout
    # The best config runs again to the same accuracy (same seed, same config).
    best = max(completed, key=lambda r: float(r["accuracy"]))
    again = cli(
        "run", "--config", str(out / "best.yaml"), "--out-dir", str(tmp_path / "again"),
        "--name", "best", "--quiet", timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads((tmp_path / "again" / "best" / "summary.json").read_text())
    assert summary["final_accuracy"] == float(best["accuracy"])
    assert not ours(out), "a trial's run outlived the search"


@pytest.mark.slow
def test_asha_every_file_and_line_says_what_each_trials_run_directory_says(tmp_path):
    # 30 epochs of synthetic data, an eval after each (a few seconds of training): ASHA ranks
    # the trials at their 2nd, 4th, 8th and 16th evals while their runs go on, and stops the
    # two tiny learning rates long before their runs would end.
    base = write(tmp_path / "base.yaml", {"dataset": "synthetic", "model": "mlp", "epochs": 30})
    space = write(tmp_path / "space.yaml", {"optimizer.lr": {"grid": [0.1, 0.05, BAD_LR, 2e-5]}})
    out = tmp_path / "out"

    done = cli("tune", "--config", str(base), "--space", str(space), "--scheduler", "asha",
               "--out", str(out), timeout=400)  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_rows(out)
    assert len(rows) == 4 and any(r["status"] == "stopped" for r in rows), rows
    for row in rows:  # one record: the run directory, whatever Tune last heard
        run_dir = out / "trials" / row["trial"]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert row["status"] == summary["status"], row
        assert int(row["evals"]) == lead_evals(run_dir) >= 1, row
        assert float(row["accuracy"]) == summary["final_accuracy"], row
        assert (float(row["seconds"]) if row["seconds"] else None) == summary["wall_seconds"]
        assert summary["tune"]["trial"] == row["trial"]
        line = f"{row['status']}: {row['trial']}  accuracy {format_number(float(row['accuracy']))}"
        assert f"{line}  ({row['evals']} evals)" in done.stderr, (line, done.stderr[-3000:])
    stopped = next(r for r in rows if r["status"] == "stopped")
    shown = cli("show", str(out / "trials" / stopped["trial"]))
    assert shown.returncode == 0 and "stopped" in shown.stdout, shown.stderr[-2000:]
    # `distlab report` takes every trial, each with its status.
    report = cli("report", str(out / "trials"), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr[-2000:]
    reported = {r["run"]: r["status"] for r in read_rows(tmp_path / "report")}
    assert reported == {r["trial"]: r["status"] for r in rows}


def test_metric_png_draws_the_best_so_far_as_best_yaml_picks_it(tmp_path, saved_figures):
    from matplotlib.text import Text

    from distlab.experiments.tune.outcome import TrialRow, TuneOutcome, best_row, write_outcome
    from distlab.experiments.tune.plan import plan_tune
    from distlab.experiments.tune.space import parse_space

    plan = plan_tune(BASE, parse_space({"optimizer.lr": {"grid": [0.1, 0.05, 0.02]}}),
                     tmp_path / "out")  # fmt: skip

    def trial(name: str, status: str, accuracy: float, lr: float) -> TrialRow:
        config = {**BASE, "optimizer": {"lr": lr}}
        return TrialRow(name, status, 5, accuracy, 3.0, {"optimizer.lr": lr}, config)

    # A stopped trial's last eval (0.431) beats every completed trial's final accuracy.
    rows = [trial("t_00000", "completed", 0.41, 0.1), trial("t_00001", "stopped", 0.431, 0.05),
            trial("t_00002", "completed", 0.38, 0.02)]  # fmt: skip

    write_outcome(TuneOutcome(plan, rows, best_row(plan, rows)))

    assert yaml.safe_load((plan.out / "best.yaml").read_text())["optimizer"]["lr"] == 0.1
    (figure,) = saved_figures
    (ax,) = figure.axes
    best = [line for line in ax.get_lines() if line.get_label().startswith("best so far")]
    assert len(best) == 1 and list(best[0].get_ydata()) == [0.41, 0.41, 0.41]
    said = " ".join(t.get_text() for t in figure.findobj(Text))
    assert "best.yaml" in said and "of the completed trials" in said, said


def test_a_run_killed_before_its_summary_gets_one_from_its_events(tmp_path):
    from tests.conftest import run_small

    from distlab.experiments.tune.records import settle

    result = run_small(tmp_path, epochs=2)
    own = dict(result.summary)
    for name in ("summary.json", "events.jsonl"):  # as after a SIGKILL
        (result.run_dir / name).unlink()

    settle(result.run_dir, "t_00000", "stopped", reported=1)

    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["tune"]["evals_reported"] == 1
    for key in ("final_accuracy", "final_loss", "steps", "samples", "lead_rank"):
        assert summary[key] == own[key], key
    assert summary["wall_seconds"] is None  # the run died before it measured it
    shown = cli("show", str(result.run_dir))
    assert shown.returncode == 0 and "stopped" in shown.stdout, shown.stderr[-2000:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, deadline: float = 90) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"the Ray head never answered on port {port}")


def stop_head(proc: subprocess.Popen) -> list[int]:
    """Stop the head this test started, and only it: `ray stop` would also stop every other
    Ray on this machine (other tests' clusters). `ray start --block` stops its processes on
    SIGTERM; any of them left after that is killed."""
    family = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs(family, timeout=10)
    for member in alive:
        member.kill()
    return [proc.pid, *(p.pid for p in family)]


def test_address_joins_a_ray_head_started_here_and_the_trials_run_there(tmp_path):
    port = free_port()
    ray = Path(sys.executable).parent / "ray"
    head = subprocess.Popen(
        [str(ray), "start", "--head", "--port", str(port), "--num-cpus", "2",
         "--include-dashboard=false", "--node-ip-address", "127.0.0.1", "--block"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    pids: list[int] = []
    try:
        wait_for_port(port, head)
        base = write(tmp_path / "base.yaml", {**BASE, "eval_every": 0})
        space = write(tmp_path / "space.yaml", {"optimizer.lr": {"grid": [0.1]}})
        out = tmp_path / "out"

        done = cli(
            "tune", "--config", str(base), "--space", str(space), "--address",
            f"127.0.0.1:{port}", "--out", str(out), timeout=300,
        )  # fmt: skip

        assert done.returncode == 0, done.stderr[-3000:]
        rows = read_rows(out)
        assert [r["status"] for r in rows] == ["completed"]
        # Each trial reported the cluster it ran on: the head's GCS, on the head's port
        # (Ray names it by the machine's address, not 127.0.0.1).
        results = [json.loads(p.read_text().splitlines()[-1])
                   for p in (out / "ray").glob("*/result.json")]  # fmt: skip
        assert len(results) == 1
        assert {r["ray_address"].rsplit(":", 1)[1] for r in results} == {str(port)}
    finally:
        pids = stop_head(head)
    assert_no_orphans(pids)


def error_of(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize(
    ("space", "args", "said"),
    [
        ({"optimizer.lrr": {"grid": [0.1]}}, [], "'optimizer.lrr' is not a config field"),
        ({"workers": {"grid": []}}, [], "grid needs a non-empty list"),
        ({"optimizer.lr": {"uniform": [0.5, 0.1]}}, [], "low 0.5 > high 0.1"),
        ({"optimizer.lr": {"loguniform": [0, 0.1]}}, [], "loguniform bounds must be > 0"),
        ({"optimizer.lr": {"grid": [0.1]}}, ["--trials", "-1"], "--trials must be >= 1"),
    ],
    ids=["unknown-field", "empty-grid", "low-above-high", "loguniform-zero", "negative-trials"],
)
def test_bad_input_is_one_line_and_exit_2_before_ray_starts(tmp_path, space, args, said):
    base = write(tmp_path / "base.yaml", BASE)
    space_file = write(tmp_path / "space.yaml", space)

    done = cli("tune", "--config", str(base), "--space", str(space_file),
               "--out", str(tmp_path / "out"), *args)  # fmt: skip

    assert said in error_of(done)
    assert not (tmp_path / "out").exists()  # nothing written, no Ray started


@pytest.mark.parametrize(
    ("space", "options", "said"),
    [
        ({"optimizer.lr": {"grid": [0.1, 0.2]}}, {"trials": 3}, "give a multiple of 2"),
        ({"workers": {"grid": [1, 0]}}, {}, "point workers=0: workers must be >= 1 (got 0)"),
        ({"optimizer.lr": {"choice": [0.1, -1]}}, {}, "optimizer.lr=-1"),
        ({"name": {"grid": ["a"]}}, {}, "each trial names its own run directory"),
        ({"optimizer.lr": {"grid": [0.1]}}, {"scheduler": "hyperband"}, "fifo, asha"),
        ({"optimizer.lr": {"grid": [0.1]}}, {"metric": "f1"}, "accuracy, loss"),
        ({"optimizer.lr": {"grid": [0.1]}}, {"max_concurrent": 0}, "--max-concurrent"),
    ],
    ids=[
        "trials-not-a-multiple",
        "bad-grid-value",
        "bad-choice-value",
        "reserved-key",
        "bad-scheduler",
        "bad-metric",
        "bad-max-concurrent",
    ],  # fmt: skip
)
def test_the_plan_checks_every_point_and_option(tmp_path, space, options, said):
    from distlab.experiments.tune.plan import plan_tune
    from distlab.experiments.tune.space import parse_space

    with pytest.raises(ValueError) as caught:
        plan_tune(BASE, parse_space(space), tmp_path / "out", **options)

    assert said in str(caught.value) and "\n" not in str(caught.value)


def test_a_plan_asks_for_the_processes_of_its_largest_trial(tmp_path):
    from distlab.experiments.tune.plan import plan_tune
    from distlab.experiments.tune.search import samples
    from distlab.experiments.tune.space import parse_space

    space = parse_space({"workers": {"grid": [1, 2]}, "optimizer.lr": {"choice": [0.1, 0.2]}})

    plan = plan_tune(BASE, space, tmp_path / "out", trials=4)

    assert plan.cpus == 2 and plan.trials == 4 and samples(plan) == 2  # two passes of the grid
    assert plan.base["threads"] == 1 and plan.mode == "max"


def test_an_unreachable_address_is_said_within_30_seconds(tmp_path):
    base = write(tmp_path / "base.yaml", BASE)
    space = write(tmp_path / "space.yaml", {"optimizer.lr": {"grid": [0.1]}})
    started = time.monotonic()

    done = cli("tune", "--config", str(base), "--space", str(space), "--address",
               f"127.0.0.1:{free_port()}", "--out", str(tmp_path / "out"))  # fmt: skip

    assert "no Ray head answers there" in error_of(done)
    assert time.monotonic() - started < 30
    assert not (tmp_path / "out").exists()


def test_ctrl_c_keeps_the_finished_trials_and_resume_runs_the_rest(tmp_path):
    base = write(tmp_path / "base.yaml", {"dataset": "synthetic", "model": "mlp", "epochs": 60})
    space = write(tmp_path / "space.yaml", {"optimizer.lr": {"grid": [0.1, 0.05]}})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "distlab", "tune", "--config", str(base), "--space",
               str(space), "--max-concurrent", "1", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 120
    # One trial at a time: the second one's run directory means the first has ended.
    while len(list((out / "trials").glob("*/events"))) < 2 and time.monotonic() < end:
        time.sleep(0.2)
    family = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]

    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 130, stderr[-2000:]
    assert "rerun with --resume" in stderr.strip().splitlines()[-1]
    first = read_rows(out)
    assert first[0]["status"] == "completed" and first[1]["status"] == "interrupted"
    # The interrupted trial's run directory is a record like any other: summary.json says
    # interrupted, with the evals it made, and `distlab show` shows it.
    stopped = out / "trials" / first[1]["trial"]
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["tune"]["trial"] == first[1]["trial"]
    assert int(first[1]["evals"]) == lead_evals(stopped)
    shown = cli("show", str(stopped))
    assert shown.returncode == 0 and "interrupted" in shown.stdout, shown.stderr[-2000:]
    assert not ours(out)
    assert_no_orphans(family)

    again = cli("tune", "--resume", "--out", str(out), timeout=120)

    assert again.returncode == 0, again.stderr[-2000:]
    rows = read_rows(out)
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert rows[0]["seconds"] == first[0]["seconds"]  # the finished trial was not run again


def test_resume_needs_a_search_and_a_new_search_an_empty_out(tmp_path):
    base = write(tmp_path / "base.yaml", BASE)
    space = write(tmp_path / "space.yaml", {"optimizer.lr": {"grid": [0.1]}})
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("not a search")

    nothing = cli("tune", "--resume", "--out", str(tmp_path / "used"))
    taken = cli("tune", "--config", str(base), "--space", str(space), "--out",
                str(tmp_path / "used"))  # fmt: skip

    assert "holds no search to continue" in error_of(nothing)
    assert "is not empty: --resume to continue its search" in error_of(taken)


# An interpreter in which `import optuna` fails, running the distlab command.
WITHOUT_OPTUNA = (
    "import sys; sys.modules['optuna'] = None; from distlab.cli import main; main(sys.argv[1:])"
)


def test_optuna_search_without_optuna_says_how_to_install(tmp_path):
    base = write(tmp_path / "base.yaml", BASE)
    space = write(tmp_path / "space.yaml", {"optimizer.lr": {"loguniform": [1e-3, 0.1]}})
    args = ["tune", "--config", str(base), "--space", str(space), "--search", "optuna"]

    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_OPTUNA, *args], capture_output=True, text=True, timeout=120
    )

    assert "pip install 'distlab[optuna]'" in error_of(done)


def test_optuna_search_samples_the_space(tmp_path):
    pytest.importorskip("optuna", reason="needs optuna: pip install 'distlab[optuna]'")
    base = write(tmp_path / "base.yaml", {**BASE, "dataset": "synthetic", "model": "mlp"})
    space = write(tmp_path / "space.yaml", {"optimizer.lr": {"loguniform": [1e-3, 0.1]}})
    out = tmp_path / "opt"

    done = cli("tune", "--config", str(base), "--space", str(space), "--search", "optuna",
               "--trials", "2", "--out", str(out), timeout=300)  # fmt: skip

    assert done.returncode == 0, done.stderr[-2000:]
    rows = read_rows(out)
    lrs = [float(r["optimizer.lr"]) for r in rows]
    assert len(rows) == 2 and all(1e-3 <= lr <= 0.1 for lr in lrs) and lrs[0] != lrs[1]
