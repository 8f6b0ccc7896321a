"""The acceptance sweep of the report: 3 strategies x workers 1, 2 x 2 seeds on mnist-sample,
two cells at a time, then one report with every figure, whose tables hold the summaries'
numbers, and whose page a real headless browser renders whole."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from tests.conftest import cli

STRATEGIES = ("allreduce", "param-server", "local-sgd")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    done = cli(
        "sweep", "--name", "S", "--out-dir", str(root), "--jobs", "2",
        "--grid", f"strategy={','.join(STRATEGIES)}", "--grid", "workers=1,2",
        "--grid", "seed=0,1", "--dataset", "mnist-sample", "--model", "mlp", "--epochs", "1",
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = root / "report"
    done = cli("report", str(root / "S"), "--out", str(out), "--network", "1gbit,10gbit")
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = {
        d.name: json.loads((d / "summary.json").read_text())
        for d in sorted((root / "S").iterdir())
        if (d / "summary.json").is_file()
    }
    return out, summaries


def test_the_sweep_ran_every_cell(report):
    _, summaries = report
    assert len(summaries) == 12
    assert all(s["status"] == "completed" for s in summaries.values())
    assert {(s["strategy"], s["workers"], s["seed"]) for s in summaries.values()} == {
        (st, w, seed) for st in STRATEGIES for w in (1, 2) for seed in (0, 1)
    }


def test_the_report_has_every_figure(report):
    out, _ = report
    for name in ("speedup.png", "accuracy.png", "curves.png", "communication.png", "whatif.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
    assert list(out.glob("partition-*.png"))
    assert {"report.md", "report.html", "results.csv"} <= {p.name for p in out.iterdir()}


def test_tables_hold_the_summaries_numbers(report):
    out, summaries = report
    table = pd.read_csv(out / "results.csv")
    assert sorted(table["run"]) == sorted(summaries)
    markdown = (out / "report.md").read_text()
    for _, row in table.iterrows():
        summary = summaries[row["run"]]
        for key in ("final_accuracy", "train_seconds", "samples_per_second", "workers", "seed"):
            assert row[key] == summary[key], (row["run"], key)
        assert row["environment.cores"] == summary["environment"]["cores"]
        line = next(x for x in markdown.splitlines() if x.startswith(f"| {row['run']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert str(summary["final_accuracy"]) in cells and str(summary["train_seconds"]) in cells


def test_a_real_browser_shows_every_image_and_a_row_per_run(report):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("needs a headless browser: install Debian's chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    out, summaries = report
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1400,1000")
    browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        browser.get((out / "report.html").as_uri())
        # the wide table scrolls in its own box: the page itself never gets wider than 1400 px
        page_width = browser.execute_script("return document.documentElement.scrollWidth")
        view_width = browser.execute_script("return document.documentElement.clientWidth")
        widths = browser.execute_script(
            "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)"
        )
        rows = browser.execute_script("return document.querySelectorAll('#runs tbody tr').length")
        browser.save_screenshot(str(out / "screenshot.png"))
    finally:
        browser.quit()
    assert page_width <= view_width, (page_width, view_width)
    assert len(widths) >= 6 and all(w > 0 for w in widths), widths
    assert rows == len(summaries)
