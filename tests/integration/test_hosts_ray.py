"""Ray clusters across two simulated hosts: `ray start --head` on hosta (10.77.0.1) and
`ray start --address` on hostb (10.77.0.2), one CPU each, started once for the module. From
hosta, `distlab tune`, `distlab tune-sklearn` and `distlab sweep` with --address place their
trials and cells on both nodes and name each one's node; a search whose out dir hostb cannot
see is refused in one line; hostb's raylet killed mid-search is named in one line, its trial
failed with that cause, and the search completes. No Ray process is left on either host."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml
from tests.hosts import HOST_DIR, HostBed, missing

pytest.importorskip("ray", reason="the Ray cluster tests need the ray package")

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
HEAD = "10.77.0.1:6379"
NODES = {"10.77.0.1", "10.77.0.2"}
TINY = {"dataset": "synthetic", "model": "mlp", "epochs": 1, "workers": 1, "threads": 1}
# The head notices a lost node within seconds rather than Ray's default half a minute.
FAST_HEALTH = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def ray_start(host, *args: str, env: dict[str, str] | None = None) -> None:
    """`ray start` on `host` with one CPU, its own temp dir (hosts share /tmp), its address."""
    argv = [RAY, "start", "--num-cpus", "1", "--disable-usage-stats",
            "--temp-dir", f"{HOST_DIR}/ray", "--node-ip-address", host.addr, *args]  # fmt: skip
    done = host.run(argv, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]


def token_env() -> dict[str, str]:
    """A Ray head with token authentication (on where ~/.ray/auth_token exists) admits a
    node only in token mode."""
    return {"RAY_AUTH_MODE": "token"} if (Path.home() / ".ray" / "auth_token").exists() else {}


@pytest.fixture(scope="module")
def cluster():
    reason = missing()
    if reason:
        pytest.skip(reason)
    with HostBed(2) as bed:
        a, b = bed.hosts
        try:
            ray_start(a, "--head", "--port", "6379", "--include-dashboard", "false",
                      env=FAST_HEALTH)  # fmt: skip
            ray_start(b, "--address", HEAD, env=token_env())
            yield a, b
        finally:
            for host in (a, b):
                host.run([RAY, "stop", "--force"], timeout=60)
            time.sleep(1)
            left = {h.name: h.pids() for h in (a, b)}
            for host in (a, b):
                host.kill_all()
        assert left == {"hosta": [], "hostb": []}, f"Ray processes left: {left}"


def distlab(host, *args: str, timeout: float = 150):
    return host.run([sys.executable, "-m", "distlab", *args], timeout=timeout,
                    env={"COLUMNS": "200"})  # fmt: skip


def rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def tune_args(tmp_path: Path, out: Path, seeds: list[int], **base) -> list[str]:
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump({**TINY, **base}))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"seed": {"grid": seeds}}))
    return ["tune", "--config", str(config), "--space", str(space), "--address", HEAD,
            "--out", str(out)]  # fmt: skip


def test_tune_places_trials_on_both_nodes(cluster, tmp_path):
    a, _ = cluster
    out = tmp_path / "tune"  # /tmp: a file system both hosts share
    done = distlab(a, *tune_args(tmp_path, out, [0, 1]))

    assert done.returncode == 0, done.stderr[-3000:]
    results = rows(out / "results.csv")
    assert [r["status"] for r in results] == ["completed"] * 2
    assert {r["node"] for r in results} == NODES
    assert {r["host"] for r in results} == {"hosta", "hostb"}


def test_tune_refuses_an_out_dir_another_node_cannot_see(cluster, tmp_path):
    a, _ = cluster
    out = f"{HOST_DIR}/tune-unshared"  # each host has its own
    done = distlab(a, *tune_args(tmp_path, Path(out), [0]))

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert "is not shared with node 10.77.0.2 (hostb)" in lines[-1], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not (a.home / "tune-unshared").exists()  # nothing written


def test_tune_sklearn_places_trials_on_both_nodes(cluster, tmp_path):
    a, _ = cluster
    out = tmp_path / "sk"
    done = distlab(a, "tune-sklearn", "--estimator", "knn", "-p", "n_neighbors=1,3",
                   "--address", HEAD, "--out", str(out))  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    results = rows(out / "results.csv")
    assert [r["status"] for r in results] == ["completed"] * 2
    assert {r["node"] for r in results} == NODES


def test_sweep_runs_cells_as_ray_tasks_on_both_nodes(cluster, tmp_path):
    a, _ = cluster
    flags = ["--dataset", "synthetic", "--model", "mlp", "--epochs", "1", "--set", "threads=1"]
    done = distlab(a, "sweep", "--name", "S", "--out-dir", str(tmp_path), "--grid",
                   "seed=0,1", *flags, "--address", HEAD)  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "S" / "sweep.json").read_text())
    assert [c["status"] for c in record["cells"]] == ["completed"] * 2
    assert {c["node"] for c in record["cells"]} == {"10.77.0.1 (hosta)", "10.77.0.2 (hostb)"}
    for cell in record["cells"]:
        summary = json.loads((tmp_path / "S" / cell["name"] / "summary.json").read_text())
        assert summary["status"] == "completed"


def test_sweep_bad_address_is_one_line(cluster, tmp_path):
    a, _ = cluster
    done = distlab(a, "sweep", "--name", "S", "--out-dir", str(tmp_path), "--grid",
                   "seed=0,1", "--address", "10.77.0.1:1")  # fmt: skip

    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].count("10.77.0.1:1") == 1
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "S").exists()


def raylet(host) -> int:
    for pid in host.pids():
        try:
            if b"raylet" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]:
                return pid
        except OSError:
            continue
    raise AssertionError(f"no raylet on {host.name}")


def wait_for_trial_on(out: Path, node: str, deadline: float = 90) -> str:
    """The trial whose run started on `node` and recorded a step."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        for path in (out / "logs").glob("*.node.json"):
            trial = path.name.removesuffix(".node.json")
            events = out / "trials" / trial / "events"
            if json.loads(path.read_text() or "{}").get("node") == node and any(
                f.stat().st_size for f in events.glob("*.jsonl")
            ):
                return trial
        time.sleep(0.2)
    raise AssertionError(f"no trial started on {node} within {deadline} s")


def test_a_node_lost_mid_search_is_named_and_the_search_completes(cluster, tmp_path):
    a, b = cluster
    out = tmp_path / "lost"
    proc = a.popen([sys.executable, "-m", "distlab",
                    *tune_args(tmp_path, out, [0, 1], epochs=40)])  # fmt: skip
    try:
        trial = wait_for_trial_on(out, "10.77.0.2")
        os.kill(raylet(b), signal.SIGKILL)
        started = time.monotonic()
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    print(f"search ended {time.monotonic() - started:.1f} s after the raylet was killed")

    assert proc.returncode == 0, stderr[-3000:]
    said = [line for line in stderr.splitlines() if line.startswith("node ")]
    assert said == [f"node 10.77.0.2 (hostb) lost during the search: its trials {trial} failed"]
    results = {r["trial"]: r for r in rows(out / "results.csv")}
    assert results[trial]["status"] == "failed"
    assert results[trial]["error"].startswith("node 10.77.0.2 (hostb) lost")
    other = next(r for t, r in results.items() if t != trial)
    assert (other["status"], other["node"]) == ("completed", "10.77.0.1")
    b.kill_all()  # what the killed raylet left on hostb
