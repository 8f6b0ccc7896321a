"""NCCL paths: run only where CUDA is present (marked gpu)."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import final_state, make_config, run_small, step_losses

needs_cuda = pytest.mark.skipif(
    torch.cuda.device_count() < 1, reason="needs a CUDA device for NCCL"
)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("strategy", ["allreduce", "ddp"])
def test_nccl_data_parallel_matches_cpu(tmp_path, strategy):
    workers = min(2, torch.cuda.device_count())
    gpu = run_small(tmp_path / "g", strategy=strategy, workers=workers, device="cuda")
    cpu = run_small(tmp_path / "c", strategy=strategy, workers=workers)
    assert max(abs(a - b) for a, b in zip(step_losses(gpu), step_losses(cpu), strict=True)) < 1e-3
    assert final_state(gpu).keys() == final_state(cpu).keys()


def test_cuda_asked_for_without_a_device_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(ValueError, match="no CUDA device is present"):
        from distlab.api import run

        run(make_config(tmp_path, device="cuda"))
    assert not (tmp_path / "runs").exists()
