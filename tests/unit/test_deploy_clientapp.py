"""The ClientApp's handlers on real Flower messages, built by the flower executor's own
code: a deployed client trains exactly as a host of the in-process executors does, a site
can train on its own files, and a node that disagrees with the server is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from tests.unit.test_files import mnist_arrays, write_mnist_dir

from distlab.config import validate_config
from distlab.data.datasets import load_dataset
from distlab.deploy.clientapp import answer_query, answer_train
from distlab.federated.clients import client_data, local_spec
from distlab.federated.flower import RECORD, FlowerExecutor, FlowerSettings
from distlab.federated.types import Layout
from distlab.models import build_model
from distlab.training import flat_params


def config(**fields):
    base = {"dataset": "digits", "model": "mlp", "seed": 3, "strategy": {
        "name": "fedavg", "clients": 3, "executor": "flower", "local_epochs": 2}}  # fmt: skip
    base.update(fields)
    return validate_config(base)


def context(partition: int, partitions: int = 3, **extra) -> Context:
    node = {"partition-id": partition, "num-partitions": partitions, "threads": 1, **extra}
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})


def server_message(cfg, kind: str, round_: int = 1, client: int = 0, start=None):
    """The message the server's executor sends (its own code builds it)."""
    executor = FlowerExecutor(None, None, cfg.to_json(), None, None, FlowerSettings(3))
    if kind == "query":
        return executor.message(7, kind, {"config": cfg.to_json()}, "query")
    model = build_model(cfg.model, (64,), 10, cfg.seed)
    layout = Layout.of(model)
    start = flat_params(model).clone() if start is None else start
    arrays = {n: v.numpy() for n, v in layout.split(start).items()}
    settings = {"config": cfg.to_json(), "round": round_, "client": client}
    return executor.message(7, kind, settings, str(round_), arrays), start, layout


def reply_params(reply, layout: Layout) -> torch.Tensor:
    arrays = reply.content["params"]
    return layout.join({name: arrays[name].numpy() for name in arrays.keys()})


def test_a_deployed_client_trains_exactly_as_an_in_process_host():
    from distlab.federated.sequential import SequentialExecutor
    from distlab.runtime.context import WorkerContext

    cfg = config()
    message, start, layout = server_message(cfg, "train", round_=2, client=1)
    previous = torch.get_num_threads()
    try:
        reply = answer_train(message, context(1))
        data = load_dataset(cfg.dataset)
        ctx = WorkerContext.solo(cfg, data)
        model = build_model(cfg.model, data.input_shape, data.classes, cfg.seed)
        host = SequentialExecutor(model, client_data(ctx, cfg.strategy), local_spec(cfg),
                                  data.x_train, data.y_train, cfg.seed)  # fmt: skip
        expected = host.train(2, start, np.array([1]))
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(reply_params(reply, layout), expected.params[0])
    info = reply.content[RECORD]
    assert info["samples"] == int(expected.num_examples[0])
    assert info["loss"] == pytest.approx(float(expected.losses[0]), rel=1e-6)
    assert info["train_seconds"] > 0 and info["client"] == 1


def test_query_names_the_client_and_a_wrong_federation_is_refused():
    cfg = config()
    reply = answer_query(server_message(cfg, "query"), context(2))
    assert reply.content[RECORD]["partition_id"] == 2
    with pytest.raises(ValueError, match="--num-partitions 4 but the server's run has 3"):
        answer_query(server_message(cfg, "query"), context(0, partitions=4))
    message, _, _ = server_message(cfg, "train", client=0)
    with pytest.raises(ValueError, match="client 1 was sent client 0's work"):
        answer_train(message, context(1))


def test_a_site_trains_on_its_own_files(tmp_path):
    write_mnist_dir(tmp_path / "mnist", mnist_arrays(train=20, test=10))
    cfg = config(dataset="mnist", model="logreg")
    executor = FlowerExecutor(None, None, cfg.to_json(), None, None, FlowerSettings(3))
    model = build_model("logreg", (1, 28, 28), 10, cfg.seed)
    layout = Layout.of(model)
    arrays = {n: v.numpy() for n, v in layout.split(flat_params(model).clone()).items()}
    settings = {"config": cfg.to_json(), "round": 1, "client": 0}
    message = executor.message(7, "train", settings, "1", arrays)
    previous = torch.get_num_threads()
    try:
        reply = answer_train(
            message, context(0, **{"data-dir": str(tmp_path), "local-data": "true"})
        )
    finally:
        torch.set_num_threads(previous)
    assert reply.content[RECORD]["samples"] == 20  # every sample of the site, not a third
    assert not torch.equal(reply_params(reply, layout), flat_params(model))
