"""The seams between the API and the runtime: the config checked once, the run directory's
layout handed down in the Job, the partition computed once and handed to the ranks."""

from __future__ import annotations

import time

import numpy as np
import pytest

from distlab.api import make_job, prepare, validated
from distlab.config import RunConfig, validate_config
from distlab.data.datasets import load_dataset
from distlab.runs.directory import RunPaths
from distlab.runtime.launch import Job, run_inline
from distlab.strategies import get_spec


class Probe:
    """An entry point that keeps what its rank was handed."""

    params = None
    seen: dict = {}

    @classmethod
    def run(cls, ctx, params) -> None:
        cls.seen.update(partition=ctx.partition, paths=ctx.paths, role=ctx.role)


PROBE = Probe


def fedavg_config(tmp_path) -> RunConfig:
    return validate_config(
        {
            "dataset": "synthetic",
            "model": "logreg",
            "strategy": {"name": "fedavg", "clients": 4, "rounds": 1},
            "partition": {"scheme": "dirichlet", "alpha": 0.5},
            "out_dir": str(tmp_path),
        }
    )


def test_a_run_config_is_checked_without_being_parsed_again(tmp_path):
    cfg = fedavg_config(tmp_path)
    built = RunConfig(dataset="synthetic", strategy="allreduce", workers=2, out_dir=tmp_path)

    assert validated(cfg) is cfg
    assert validated(built) is built
    # pydantic passes it; the checks across fields, made here, refuse it
    with pytest.raises(ValueError, match="fault.rank must be < 2"):
        validated(RunConfig(strategy="allreduce", workers=2, fault={"rank": 2}))


def test_a_job_gives_the_paths_of_a_run_directory_only_with_its_layout(tmp_path):
    job = Job("m:a", ("worker",))

    assert job.paths(None) is None
    with pytest.raises(ValueError, match="needs its layout"):
        job.paths(tmp_path)
    assert Job("m:a", ("worker",), 0, RunPaths).paths(tmp_path) == RunPaths(tmp_path)


def test_a_rank_is_handed_the_partition_the_api_computed(tmp_path):
    cfg, spec = fedavg_config(tmp_path), get_spec("fedavg")
    data = load_dataset("synthetic")
    split = spec.data_partition(cfg, data.y_train.numpy())
    run_dir = prepare(cfg, False, split, None)
    job = make_job(cfg, spec, 1, split)
    job = Job(f"{__name__}:PROBE", job.roles, job.lead, job.layout, job.partition)

    run_inline(cfg, job, run_dir, time.time(), data)

    seen = Probe.seen
    assert seen["partition"] is split and seen["role"] == spec.role(cfg, 0)
    assert seen["paths"] == RunPaths(run_dir)
    again = spec.data_partition(cfg, data.y_train.numpy())
    assert all(np.array_equal(a, b) for a, b in zip(split.indices, again.indices, strict=True))
