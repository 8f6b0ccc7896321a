"""The ClientApp a SuperNode runs for each message of a deployed distlab run.

It knows only what its node was started with (`partition-id`, `num-partitions`, and
optionally `data-dir` and `local-data`) and what the server's message carries (the run's
config as JSON, the round, the client id, the global parameters). It trains with the same
code as the in-process executors: the client's partition (computed from the config's
partition scheme and seed, as every rank does) or, with `local-data`, every training sample
in the node's own data directory, batches from `client_batches` and `train_client`.
Flower starts a fresh process per message, so nothing is kept between rounds.
"""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import torch

from distlab.federated.flower import RECORD


def node_setting(context, key: str, default=None):
    value = context.node_config.get(key, default)
    return default if value in ("", None) else value


def check_membership(context, cfg) -> int:
    """This node's client id; ValueError when the node and the server disagree."""
    client = int(node_setting(context, "partition-id", -1))
    count = int(node_setting(context, "num-partitions", -1))
    clients = cfg.strategy.clients
    if count != clients:
        raise ValueError(
            f"client {client}: started with --num-partitions {count} but the server's run "
            f"has {clients} clients"
        )
    if not 0 <= client < clients:
        raise ValueError(f"client {client}: partition id outside 0..{clients - 1}")
    return client


def answer_query(message, context):
    """Which client this node hosts, and where it runs."""
    from flwr.app import ConfigRecord, Message, RecordDict

    cfg = read_config(message)
    client = check_membership(context, cfg)
    info = {"partition_id": client, "address": socket.gethostname(), "pid": os.getpid()}
    return Message(RecordDict({RECORD: ConfigRecord(info)}), reply_to=message)


def answer_train(message, context):
    """Train this client for one round from the global parameters in the message."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

    from distlab.federated.flower import numpy_ndarrays_named

    torch.set_num_threads(int(node_setting(context, "threads", 1)))
    settings = message.content[RECORD]
    cfg = read_config(message)
    client = check_membership(context, cfg)
    if int(settings["client"]) != client:
        raise ValueError(f"client {client} was sent client {settings['client']}'s work")
    begin = time.perf_counter()
    named, samples, loss, accuracy = train_round(
        cfg, client, int(settings["round"]), message.content["params"], context
    )
    info = {
        "samples": samples,
        "loss": loss,
        "train_seconds": time.perf_counter() - begin,
        "client": client,
    }
    if accuracy is not None:
        info["val_accuracy"] = accuracy
    content = {"params": ArrayRecord(numpy_ndarrays_named(named)), RECORD: ConfigRecord(info)}
    return Message(RecordDict(content), reply_to=message)


def read_config(message):
    import json

    from distlab.config import validate_config

    return validate_config(json.loads(str(message.content[RECORD]["config"])))


def train_round(cfg, client: int, round_: int, arrays, context):
    """(named parameters, samples, mean loss, accuracy on the client's validation samples)."""
    from distlab.federated.clients import client_batches, local_spec, train_client
    from distlab.federated.evaluation import local_accuracy
    from distlab.federated.types import Layout
    from distlab.models import build_model

    data, own = client_samples(cfg, client, context)
    model = build_model(cfg.model, data.input_shape, data.classes, cfg.seed)
    layout = Layout.of(model)
    start = layout.join({name: arrays[name].numpy() for name in arrays.keys()})
    spec = local_spec(cfg)
    batches = client_batches(own.train[0], spec.batch, spec.epochs, cfg.seed, round_, client)
    # Dropout draws from torch's generator: seeded per (client, round), as a fresh process.
    torch.manual_seed(int(np.random.SeedSequence([cfg.seed, client, round_]).generate_state(1)[0]))
    flat, losses = train_client(model, start, data.x_train, data.y_train, batches, spec)
    named = {n: v.detach().numpy().copy() for n, v in layout.split(flat).items()}
    samples = len(own.train[0])
    accuracy = None
    if len(own.test[0]):
        accuracy = float(local_accuracy(model, own, data.x_train, data.y_train)[0])
    return named, samples, float(np.mean(losses)) if losses else float("nan"), accuracy


def client_samples(cfg, client: int, context):
    """The dataset and this client's (train, held-out) indices as a one-client ClientData."""
    from distlab.data.datasets import load_dataset
    from distlab.federated.clients import ClientData, client_partition, split_clients

    data_dir = node_setting(context, "data-dir") or cfg.data_dir
    data = load_dataset(cfg.dataset, data_dir, False)
    fraction = cfg.strategy.local_test_fraction
    if str(node_setting(context, "local-data", "false")).lower() == "true":
        everything = np.arange(len(data.y_train))
        own = split_clients([everything], fraction, cfg.seed)
        return data, own
    parts = client_partition(cfg, data.y_train.numpy())  # as every in-process rank computes it
    both = split_clients(parts.indices, fraction, cfg.seed)
    return data, ClientData([both.train[client]], [both.test[client]])


def make_app():
    from flwr.clientapp import ClientApp

    app = ClientApp()
    app.query()(answer_query)
    app.train()(answer_train)
    return app
