"""A strategy defined in this test module alone (a spec and a run function, no other file
touched) runs end to end through distlab.run, in one process and in spawned processes."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest
import torch
from tests.conftest import make_config

import distlab
from distlab.strategies import STRATEGIES, StrategyBase, StrategySpec, register
from distlab.strategies.common import local_step, own_schedule, train_epochs
from distlab.training import flat_params, make_optimizer, set_flat_params


class Params(StrategyBase):
    """Each worker trains on its own contiguous shard; the models are averaged at the end."""

    name: Literal["toy-average"] = "toy-average"


def shard(cfg, rank: int, samples: int) -> np.ndarray:
    return np.array_split(np.arange(samples), cfg.workers)[rank]


def run(ctx, params: Params) -> None:
    model = ctx.build_model()
    opt = make_optimizer(model.parameters(), ctx.cfg.optimizer)
    own = shard(ctx.cfg, ctx.rank, len(ctx.labels()))
    schedule = own_schedule(ctx, own, stream=ctx.rank)
    train_epochs(ctx, model, local_step(model, opt), schedule, evaluate=False)
    averaged = flat_params(model).clone()
    ctx.comm.all_reduce(averaged)
    set_flat_params(model, averaged / ctx.world)
    ctx.evaluate(model, step=0)
    ctx.save_model(model)


SPEC = StrategySpec("toy-average", Params, run)


@pytest.fixture(autouse=True)
def toy_registered():
    register("toy-average", f"{__name__}:SPEC")
    yield
    STRATEGIES.pop("toy-average", None)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_strategy_from_a_test_module_runs_end_to_end(tmp_path, workers):
    cfg = make_config(tmp_path, strategy="toy-average", workers=workers, sampler="random")

    result = distlab.run(cfg)

    steps = [e for e in result.events if e["kind"] == "step"]
    assert result.summary["status"] == "completed"
    assert result.summary["processes"] == workers
    # the lead worker walks its own shard: ceil(shard / batch) steps
    assert len(steps) == -(-len(shard(cfg, 0, 2000)) // cfg.batch_size)
    assert result.summary["final_accuracy"] > 0.5
    saved = torch.load(result.run_dir / "model.pt", weights_only=True)
    assert set(saved) == {"net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias"} | {
        "net.5.weight",
        "net.5.bias",
    }


def test_a_registered_name_cannot_be_taken_twice():
    with pytest.raises(ValueError, match="already registered"):
        register("toy-average", "elsewhere:SPEC")


def test_a_spec_whose_params_name_differs_is_refused():
    with pytest.raises(ValueError, match="must default to the spec's name"):
        StrategySpec("other-name", Params, run)
