"""`distlab dashboard` end to end: the command serves real run directories to headless
chromium; the page lists the runs, shows a federated run's clients, rounds and charts, and
follows the run live as events are appended; off loopback every request needs the token."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from tests.conftest import cli, headless_chromium, make_config
from tests.unit.test_dashboard_runs import FED, append_events, make_live, next_round

from distlab.api import run

WAIT = 15  # seconds a page may take to show what the test waits for


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """fed (FedAvg, finished), live (FedAvg mid-run with deployed clients), ar (allreduce)."""
    root = tmp_path_factory.mktemp("dashboard")
    run(make_config(root, name="fed", strategy=FED))
    run(make_config(root, name="ar", strategy="allreduce", workers=2))
    make_live(root / "runs", root / "runs" / "fed")
    return root / "runs"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(runs: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`distlab dashboard` in a subprocess, and the URL it printed once it listens."""
    command = [sys.executable, "-m", "distlab", "dashboard", str(runs), "--port", str(free_port())]
    proc = subprocess.Popen([*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    line = proc.stdout.readline().strip()
    assert line.startswith("dashboard: http://"), (line, proc.stderr.read() if not line else "")
    return proc, line.removeprefix("dashboard: ")


def stop(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=10)
    return proc.returncode, err


@pytest.fixture(scope="module")
def server(runs):
    proc, url = start(runs)
    yield url
    code, err = stop(proc, signal.SIGINT)
    assert code == 0 and "Traceback" not in err, err


@pytest.fixture(scope="module")
def browser():
    chrome = headless_chromium(console_log=True)
    yield chrome
    chrome.quit()


def wait_for(browser, script: str, expected=True):
    """Wait until the script returns `expected`; return what it returned last."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    seen = []

    def check(driver):
        seen.append(driver.execute_script(script))
        return seen[-1] == expected

    try:
        WebDriverWait(browser, WAIT, poll_frequency=0.2).until(check)
    except TimeoutException:
        pytest.fail(f"{script!r} gave {seen[-1:]!r}, not {expected!r}, for {WAIT} s")
    return seen[-1]


def count(selector: str) -> str:
    return f"return document.querySelectorAll({selector!r}).length"


def text(element_id: str) -> str:
    return f"return document.getElementById({element_id!r}).textContent"


def drawn(chart: str, layer: str) -> str:
    """Script: whether the chart has Plotly's SVG and at least one trace drawn in `layer`."""
    return (
        f"const c = document.getElementById({chart!r});"
        f"return c.querySelector('.main-svg') !== null && c.offsetHeight > 0 &&"
        f" c.querySelectorAll('.{layer} .trace').length > 0"
    )


def test_the_page_lists_the_runs_and_follows_a_federated_run_live(runs, server, browser, tmp_path):
    browser.get(server + "#run=live")
    wait_for(browser, count(".run-item"), 3)
    paths = browser.execute_script(
        "return [...document.querySelectorAll('.run-item')].map(a => a.dataset.path).sort()"
    )
    assert paths == ["ar", "fed", "live"]
    wait_for(browser, count("#clients tr.client-row"), 3)
    assert browser.execute_script(text("round-counter")) == "2"
    wait_for(browser, drawn("chart-loss", "scatterlayer"))
    wait_for(browser, drawn("chart-round-split", "barlayer"))
    wait_for(browser, drawn("chart-train-times", "barlayer"))
    wait_for(browser, drawn("chart-val-accuracy", "boxlayer"))
    node = browser.execute_script("return document.querySelector('tr.client-row').textContent")
    assert "12107536797416033456" in node  # the node id exactly, not rounded to a float
    # counts get whole-number ticks: rounds, and client rounds per training-time bin (at
    # most 2 here, where Plotly's own ticks would be 0, 0.5, 1, 1.5, 2)
    for chart, axis in (("chart-train-times", "ytick"), ("chart-loss", "xtick"),
                        ("chart-round-split", "xtick")):  # fmt: skip
        labels = f"#{chart} .{axis} text"
        ticks = browser.execute_script(
            f"return [...document.querySelectorAll({labels!r})].map(t => t.textContent)"
        )
        assert ticks and all(t.isdigit() for t in ticks), (chart, ticks)

    # the run goes on: one more round, with client 1 lost
    rank_file = runs / "live" / "events" / "rank-0.jsonl"
    append_events(rank_file, next_round(rank_file, lost=1))
    wait_for(browser, text("round-counter"), "3")
    wait_for(browser, count("#rounds tr.round-row"), 3)
    wait_for(browser, "return document.querySelector('tr.client-row[data-client=\"1\"]')"
                      ".dataset.status", "lost")  # fmt: skip
    row = "document.querySelector('tr.round-row[data-round=\"3\"]')"
    failed = f"return {row}.children[2].textContent"
    assert browser.execute_script(failed) == "1 (lost: no reply)"
    browser.save_screenshot(str(tmp_path / "live.png"))
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


AUTO_NAMES = ("param-server-mnist-sample-lenet-20261207-101500",
              "param-server-mnist-sample-lenet-20261207-101533")  # fmt: skip


@pytest.fixture(scope="module")
def auto_named(runs, tmp_path_factory) -> Path:
    """Two finished runs named as distlab names them, one second apart, whose lead rank
    planned more steps than it did (as an asynchronous parameter server's does)."""
    root = tmp_path_factory.mktemp("names")
    for name in AUTO_NAMES:
        shutil.copytree(runs / "fed", root / name)
        merged = root / name / "events.jsonl"
        events = [json.loads(line) for line in merged.read_text().splitlines()]
        for event in events:
            if event.get("phase") == "train":
                event["total"] += 3
        merged.write_text("".join(json.dumps(e) + "\n" for e in events))
    return root


def test_long_run_names_stay_distinct_and_a_finished_run_shows_what_it_did(
    auto_named, browser, tmp_path
):
    proc, url = start(auto_named)
    try:
        browser.get(url + "#run=" + AUTO_NAMES[0])
        wait_for(browser, count(".run-item"), 2)
        wait_for(browser, text("round-counter"), "2")
        names = browser.execute_script(
            "return [...document.querySelectorAll('.run-name')].map(n => {"
            " const [head, tail] = n.children, box = n.getBoundingClientRect();"
            " const end = tail.getBoundingClientRect();"
            " return {title: n.title, tail: tail.textContent,"
            " cut: head.scrollWidth > head.clientWidth,"
            " shown: end.width > 0 && end.right <= box.right + 0.5}; })"
        )
        total = browser.execute_script(text("round-total"))
        browser.save_screenshot(str(tmp_path / "names.png"))
    finally:
        stop(proc, signal.SIGTERM)
    assert sorted(n["title"] for n in names) == sorted(AUTO_NAMES)  # the whole name on hover
    assert all(n["cut"] and n["shown"] for n in names), names  # the middle goes, the end shows
    assert sorted(n["tail"] for n in names) == ["-20261207-101500", "-20261207-101533"]
    assert total == ""  # 2 rounds done, not "2 / 5": the plan shows only while a run runs


def test_a_data_parallel_run_shows_its_ranks(server, browser):
    browser.get(server + "#run=ar")
    wait_for(browser, count("#ranks tr.rank-row"), 2)
    wait_for(browser, drawn("chart-step-times", "scatterlayer"))
    wait_for(browser, drawn("chart-bytes", "barlayer"))
    assert browser.execute_script("return document.getElementById('federated').hidden")


def get(url: str, headers: dict | None = None) -> tuple[int, str, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read().decode(), dict(reply.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def test_off_loopback_every_request_needs_the_token(runs):
    proc, url = start(runs, "--host", "0.0.0.0")
    try:
        assert url.startswith("http://0.0.0.0:") and "?token=" in url
        token = url.split("?token=")[1]
        local = url.split("?")[0].replace("0.0.0.0", "127.0.0.1")
        assert get(local + "api/runs")[0] == 401
        assert get(local + "api/runs?token=wrong-token")[0] == 401
        status, body, _ = get(local + "api/runs?token=" + token)
        assert status == 200 and len(json.loads(body)["runs"]) == 3
        assert get(local + "api/runs", {"Authorization": f"Bearer {token}"})[0] == 200
        status, _, headers = get(local + "?token=" + token)
        cookie = headers["set-cookie"].split(";")[0]
        assert status == 200 and get(local + "api/runs/live", {"Cookie": cookie})[0] == 200
    finally:
        code, err = stop(proc, signal.SIGTERM)
    assert code == 0 and "Traceback" not in err, err


def test_paths_outside_runs_dir_are_not_found(runs, server):
    assert get(server + "api/runs/fed")[0] == 200
    assert get(server + "api/runs/..%2F..%2Fetc")[0] == 404
    assert get(server + "api/runs/fed/events")[0] == 404


@pytest.mark.parametrize(
    "args, message",
    [
        (["no-such-dir"], "RUNS_DIR 'no-such-dir' is not a directory"),
        ([".", "--port", "70000"], "--port must be between 1 and 65535 (got 70000)"),
        ([".", "--token", "short"], "--token must be at least 8 characters"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = cli("dashboard", *args, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


def test_a_port_in_use_is_refused_before_serving(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("dashboard", str(tmp_path), "--port", str(port))
    assert result.returncode == 2 and f"--port {port} is in use" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""
