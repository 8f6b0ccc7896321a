"""`distlab report` run as a user would: on real small runs, its files and table, fair
speedups only, failed runs marked, and one-line errors that leave nothing behind."""

from __future__ import annotations

import json
import os

import pytest
from tests.conftest import cli, run_small

from distlab.experiments.baseline import NO_BASELINE
from distlab.runtime.launch import RunFailed

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One-epoch runs: centralized, allreduce on 2 workers, and a 2-epoch centralized one."""
    root = tmp_path_factory.mktemp("runs")
    return {
        "central": run_small(root / "c", strategy="centralized", name="central", threads=1).run_dir,
        "allreduce": run_small(
            root / "a", strategy="allreduce", workers=2, name="ar", threads=1
        ).run_dir,
        "central-2": run_small(root / "c2", epochs=2, name="central-2").run_dir,
        "digits": run_small(root / "d", dataset="digits", name="digits").run_dir,
    }


def files_under(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_report_compares_real_runs_and_writes_its_files(runs, tmp_path):
    out = tmp_path / "rep"

    done = cli("report", str(runs["central"]), str(runs["allreduce"]), "--out", str(out),
               "--target", "0.5", "--baseline", "centralized")  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert f"report written to {out}" in done.stdout
    assert "central" in done.stdout and "ar" in done.stdout
    assert files_under(out) == [
        "accuracy.png", "communication.png", "curves.png", "partition-ar.png", "report.html",
        "report.md", "results.csv", "speedup.png", "summary.json",
    ]  # fmt: skip
    assert (out / "curves.png").read_bytes().startswith(PNG)
    rows = json.loads((out / "summary.json").read_text())
    assert [r["baseline"] for r in rows] == ["central", "central"]
    assert rows[0]["speedup"] == 1.0 and rows[1]["speedup"] > 0
    assert rows[1]["efficiency"] == round(rows[1]["speedup"] / 2, 3)


def test_runs_that_did_other_work_get_no_speedup(runs, tmp_path):
    out = tmp_path / "rep"

    done = cli("report", str(runs["central-2"]), str(runs["allreduce"]), "--out", str(out),
               "--baseline", "centralized")  # fmt: skip

    assert done.returncode == 0, done.stderr
    rows = json.loads((out / "summary.json").read_text())
    assert [r["samples"] for r in rows] == [4000, 2000]
    assert (rows[1]["speedup"], rows[1]["efficiency"], rows[1]["baseline"]) == (None,) * 3
    assert rows[1]["speedup_note"].startswith(NO_BASELINE)
    assert f"ar: {NO_BASELINE}" in done.stdout


def test_a_failed_run_is_marked_and_left_out_of_speedup(runs, tmp_path):
    fault = {"rank": 1, "step": 5, "kind": "raise"}
    with pytest.raises(RunFailed):
        run_small(tmp_path, strategy="allreduce", workers=2, name="broken", fault=fault)
    out = tmp_path / "rep"

    done = cli("report", str(runs["central"]), str(tmp_path / "runs" / "broken"),
               "--out", str(out))  # fmt: skip

    assert done.returncode == 0, done.stderr
    rows = json.loads((out / "summary.json").read_text())
    assert (rows[1]["status"], rows[1]["speedup"]) == ("failed", None)
    assert rows[1]["speedup_note"] == "run failed: left out of speedup"
    assert "| broken | failed |" in (out / "report.md").read_text()
    assert (out / "curves.png").read_bytes().startswith(PNG)


def bad_out_file(tmp_path):
    (tmp_path / "taken").write_text("not a directory")
    return ["--out", str(tmp_path / "taken")], ["--out", "taken", "existing file"]


def bad_out_under_file(tmp_path):
    # Nothing can be created below a regular file, not even by root.
    (tmp_path / "plain").write_text("x")
    return ["--out", str(tmp_path / "plain" / "sub")], ["--out", "plain", "is a file"]


def bad_out_read_only(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):
        pytest.skip("this user can write to a read-only directory (root)")
    return ["--out", str(locked / "rep")], ["--out", "locked", "not writable"]


def bad_missing_run(tmp_path):
    return [str(tmp_path / "nowhere")], ["run directory", "nowhere", "does not exist"]


def bad_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    return [str(tmp_path / "empty")], ["empty", "holds no run"]


def bad_mixed_datasets(tmp_path):
    return ["DIGITS"], ["different datasets (digits, synthetic)", "--force"]


def bad_network(tmp_path):
    return ["--network", "1gbit,1gb"], ["--network", "'1gb'"]


def bad_latency(tmp_path):
    return ["--network", "1gbit", "--latency", "50"], ["--latency", "'50'"]


def bad_baseline(tmp_path):
    return ["--baseline", "centralised"], ["unknown --baseline strategy 'centralised'", "allreduce"]


def bad_target_zero(tmp_path):
    return ["--target", "0"], ["--target", "(0, 1]", "(got 0.0)"]


def bad_target_above_one(tmp_path):
    return ["--target", "1.5"], ["--target", "(0, 1]", "(got 1.5)"]


@pytest.mark.parametrize(
    "case",
    [
        bad_out_file,
        bad_out_under_file,
        bad_out_read_only,
        bad_missing_run,
        bad_not_a_run,
        bad_mixed_datasets,
        bad_network,
        bad_latency,
        bad_baseline,
        bad_target_zero,
        bad_target_above_one,
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(runs, tmp_path, case):
    args, words = case(tmp_path)
    args = [str(runs["digits"]) if a == "DIGITS" else a for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "rep")]
    before = files_under(tmp_path)

    done = cli("report", str(runs["central"]), *args)

    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert all(w in done.stderr for w in words), done.stderr
    assert files_under(tmp_path) == before


def test_force_reports_runs_of_different_datasets(runs, tmp_path):
    out = tmp_path / "rep"

    done = cli("report", str(runs["central"]), str(runs["digits"]), "--out", str(out), "--force")

    assert done.returncode == 0, done.stderr
    rows = json.loads((out / "summary.json").read_text())
    assert [r["baseline"] for r in rows] == ["central", "digits"]  # each its own dataset's


# --- a link measured by distlab probe-network ----------------------------------------------------


@pytest.fixture(scope="module")
def link(tmp_path_factory):
    """A link file of two local processes (shared memory), measured by the command itself."""
    path = tmp_path_factory.mktemp("link") / "local.json"
    # up to 16 MB: on shared memory the small sizes are all noise, the large ones a slope
    done = cli("probe-network", "--workers", "2", "--out", str(path), "--repeats", "2",
               "--set", "threads=1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "allreduce overhead" in done.stdout and str(path) in done.stdout
    return path


def test_probe_network_writes_a_link_the_report_prices(runs, link, tmp_path):
    fit = json.loads(link.read_text())
    assert fit["world"] == 2 and fit["sizes_bytes"][0] == 4
    assert fit["beta_seconds_per_byte"] > 0 and fit["overhead"] > 0
    out = tmp_path / "rep"

    done = cli("report", str(runs["allreduce"]), "--out", str(out), "--network", f"1gbit,{link}")

    assert done.returncode == 0, done.stderr
    assert (out / "whatif.png").read_bytes().startswith(PNG)


def bad_link_missing(tmp_path):
    return ["--network", f"1gbit,{tmp_path / 'none.json'}"], ["none.json", "does not exist"]


def bad_link_not_json(tmp_path):
    (tmp_path / "broken.json").write_text("{")
    return ["--network", str(tmp_path / "broken.json")], ["broken.json", "not JSON"]


def bad_link_other_json(tmp_path):
    (tmp_path / "other.json").write_text('{"alpha": 1}')
    return ["--network", str(tmp_path / "other.json")], ["other.json", "probe-network"]


@pytest.mark.parametrize("case", [bad_link_missing, bad_link_not_json, bad_link_other_json])
def test_a_bad_link_file_is_one_line_exit_2_and_writes_nothing(runs, tmp_path, case):
    test_bad_input_is_one_line_exit_2_and_writes_nothing(runs, tmp_path, case)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--out", "DIR"], ["--out", "is a directory"]),
        (["--repeats", "0"], ["--repeats", ">= 1"]),
        (["--link-rate", "1gb"], ["--link-rate", "'1gb'"]),
        (["--workers", "1"], ["--workers", ">= 2"]),
        (["--max-bytes", "8"], ["--max-bytes", ">= 16"]),
        ([], ["needs 2 processes", "torchrun", "--workers 2"]),
    ],
)
def test_probe_network_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, words):
    args = [str(tmp_path) if a == "DIR" else a for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "link.json")]

    done = cli("probe-network", *args)

    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert all(w in done.stderr for w in words), done.stderr
    assert list(tmp_path.iterdir()) == []
