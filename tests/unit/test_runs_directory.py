"""runs/: one definition of a run directory, and one incremental reader of event files."""

from __future__ import annotations

import json
import os

from distlab.runs.directory import (
    RunPaths,
    find_runs,
    find_sweeps,
    is_run_dir,
    load_sweep,
    runs_in,
    sweep_file,
)
from distlab.runs.events import EventFile, EventTail, merge, read_events


def make_run(path, finished=True):
    paths = RunPaths(path)
    paths.events_dir.mkdir(parents=True)
    paths.config.write_text("{}")
    if finished:
        paths.summary.write_text("{}")
    return path


def test_a_run_directory_has_its_config_and_a_finished_one_its_summary_too(tmp_path):
    live, done = make_run(tmp_path / "live", False), make_run(tmp_path / "done")
    (tmp_path / "report").mkdir()
    RunPaths(tmp_path / "report").summary.write_text("{}")

    assert [is_run_dir(p) for p in (live, done, tmp_path / "report")] == [True, True, False]
    assert [is_run_dir(p, finished=True) for p in (live, done)] == [False, True]
    assert runs_in(tmp_path) == [done, live]
    assert runs_in(tmp_path, finished=True) == [done]


def test_runs_are_found_at_the_top_and_one_folder_down(tmp_path):
    make_run(tmp_path / "a")
    make_run(tmp_path / "sweep" / "cells-1", False)
    make_run(tmp_path / ".hidden")
    make_run(tmp_path / "deep" / "er" / "run")

    found = find_runs(tmp_path)

    assert found == [(tmp_path / "a", None), (tmp_path / "sweep" / "cells-1", "sweep")]
    assert find_runs(tmp_path / "a") == [(tmp_path / "a", None)]
    assert find_runs(tmp_path, finished=True) == [(tmp_path / "a", None)]


def test_a_sweep_is_read_from_its_record_and_a_broken_one_is_none(tmp_path):
    (tmp_path / "s").mkdir()
    sweep_file(tmp_path / "s").write_text(json.dumps({"name": "s", "cells": []}))
    (tmp_path / "half").mkdir()
    sweep_file(tmp_path / "half").write_text('{"name": ')

    assert load_sweep(tmp_path / "s") == {"name": "s", "cells": []}
    assert load_sweep(tmp_path / "half") is None
    assert find_sweeps(tmp_path) == [(tmp_path / "s", {"name": "s", "cells": []})]


def test_rank_files_are_in_rank_order_and_a_finished_run_reads_its_merged_file(tmp_path):
    paths = RunPaths(make_run(tmp_path / "r", False))
    for rank in (10, 2, 0):
        paths.rank_events(rank).write_text("")

    assert [p.name for p in paths.event_files()] == [
        "rank-0.jsonl",
        "rank-2.jsonl",
        "rank-10.jsonl",
    ]
    paths.summary.write_text("{}")
    paths.merged_events.write_text("")
    assert paths.event_files() == [paths.merged_events]


def test_an_event_file_is_read_in_pieces_and_again_when_replaced(tmp_path):
    path = tmp_path / "rank-0.jsonl"
    path.write_bytes(b'{"seconds": 1}\n{"seconds": 2')
    file = EventFile(path)

    assert file.read() == [{"seconds": 1}]
    with open(path, "ab") as fh:
        fh.write(b"}\nnot json\n[1]\n")
    assert file.read() == [{"seconds": 2}]
    assert file.changed() is False

    replacement = tmp_path / "new.jsonl"
    replacement.write_bytes(b'{"seconds": 9}\n')
    os.replace(replacement, path)
    assert file.changed() is True
    assert file.events == [{"seconds": 9}]
    path.unlink()
    assert file.changed() is True
    assert file.events == []


def test_a_tail_hands_on_each_new_event_once(tmp_path):
    path = tmp_path / "rank-0.jsonl"
    seen = []
    tail = EventTail(path, seen.append)

    tail.poll()
    path.write_text('{"round": 1}\n')
    tail.poll()
    tail.poll()
    with open(path, "a") as fh:
        fh.write('{"round": 2}\n')
    tail.poll()

    assert seen == [{"round": 1}, {"round": 2}]
    assert tail.file.events == []  # a tail keeps nothing


def test_merging_orders_by_time_then_rank_and_keeps_one_file_as_written(tmp_path):
    a = [{"seconds": 2, "rank": 0}, {"seconds": 1, "rank": 0}]
    b = [{"seconds": 1, "rank": 1}, {"rank": 1}]

    assert merge([a]) == a
    assert merge([a, b]) == [{"rank": 1}, a[1], b[0], a[0]]
    assert read_events(tmp_path / "missing.jsonl") == []
