"""`distlab partition`: the table, --json, --plot and one-line errors, run as a user would."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tests.conftest import cli

PNG = b"\x89PNG\r\n\x1a\n"


def distlab(*args: str):
    return cli("partition", *args)


def test_json_describes_a_dirichlet_split_and_plot_is_a_png(tmp_path):
    plot = tmp_path / "split.png"

    done = distlab("--clients", "10", "--scheme", "dirichlet", "--alpha", "0.1", "--json",
                   "--plot", str(plot))  # fmt: skip

    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert list(record) == [
        "scheme", "clients", "sizes", "counts", "tv_distance", "classes_per_client"
    ]  # fmt: skip
    counts = np.array(record["counts"])
    assert (record["scheme"], record["clients"], counts.shape) == ("dirichlet", 10, (10, 10))
    assert counts.sum(axis=1).tolist() == record["sizes"]
    assert sum(record["sizes"]) == 4000
    assert record["classes_per_client"] == (counts > 0).sum(axis=1).tolist()
    assert 0.3 < record["tv_distance"] <= 1.0
    assert plot.read_bytes().startswith(PNG)


def test_table_lists_every_client_and_svg_plot(tmp_path):
    plot = tmp_path / "split.svg"

    done = distlab("--clients", "4", "--scheme", "shards", "--shards-per-client", "2",
                   "--seed", "3", "--plot", str(plot), "--kind", "heatmap")  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "top classes" in done.stdout
    assert "mean TV distance" in done.stdout
    assert done.stdout.count("1000") >= 4  # 4000 samples, 8 equal shards, 2 each
    assert plot.read_text().lstrip().startswith("<?xml") and "<svg" in plot.read_text()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--scheme", "dirichlet", "--alpha", "0"], ["alpha", "(got 0"]),
        (["--scheme", "zipf"], ["unknown scheme 'zipf'", "dirichlet"]),
        (["--scheme", "shards", "--alpha", "0.5"], ["alpha", "'shards'", "shards_per_client"]),
        (["--clients", "5000"], ["clients (5000)", "samples (4000)"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, words):
    done = distlab(*args)

    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize(
    ("where", "words"),
    [
        ("missing/split.png", ["directory", "missing", "does not exist"]),
        ("afile/split.png", ["directory", "afile", "does not exist"]),
        ("adir.png", ["not a writable file path"]),
        ("/proc/split.png", ["cannot write plot '/proc/split.png'"]),
    ],
)
def test_a_plot_path_that_cannot_take_the_file_is_one_line(tmp_path, where, words):
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir.png").mkdir()

    done = distlab("--plot", str(tmp_path / where))

    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.png", "afile"]
