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
    if "fitins.parameters" in message.content.array_records:
        return answer_secure_train(message, context)
    settings = message.content[RECORD]
    cfg = read_config(message)
    client = check_membership(context, cfg)
    if int(settings["client"]) != client:
        raise ValueError(f"client {client} was sent client {settings['client']}'s work")
    begin = time.perf_counter()
    arrays = message.content["params"]
    start = {name: arrays[name].numpy() for name in arrays.keys()}
    named, samples, loss, accuracy = train_round(
        cfg, client, int(settings["round"]), start, context
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


def answer_secure_train(message, context):
    """A round of Flower's SecAgg+ workflow (federated/flower_secagg.py): the global model
    and settings come as a legacy FitIns, and this client's delta goes back as a FitRes,
    which `secaggplus_mod` masks before it leaves the node. A client drawn to drop
    (secagg.dropout, seeded per round) fails here, after sharing its keys."""
    import json

    from flwr.app import Message
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    from distlab.config import validate_config
    from distlab.federated.secagg import SECAGG_STREAM

    ins = compat.recorddict_to_fitins(message.content, keep_input=True)
    cfg = validate_config(json.loads(str(ins.config["config"])))
    client, round_ = check_membership(context, cfg), int(ins.config["round"])
    if int(ins.config["client"]) != client:
        raise ValueError(f"client {client} was sent client {ins.config['client']}'s work")
    rng = np.random.default_rng([cfg.seed, SECAGG_STREAM, round_, client])
    if rng.random() < cfg.secagg.dropout:
        raise RuntimeError(f"client {client} dropped in round {round_} (secagg.dropout)")
    begin = time.perf_counter()
    start = parameters_to_ndarrays(ins.parameters)
    named, samples, loss, accuracy = train_round(cfg, client, round_, start, context)
    deltas = [v - s for v, s in zip(named.values(), start, strict=True)]
    info = {"loss": loss, "train_seconds": time.perf_counter() - begin, "client": client}
    if accuracy is not None:
        info["val_accuracy"] = accuracy
    status = Status(Code.OK, "")
    res = FitRes(status, ndarrays_to_parameters(deltas), samples, info)
    return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=message)


def secure_mod(message, context, call_next):
    """Flower's `secaggplus_mod` on the messages of its SecAgg+ workflow; the others (a
    run without secagg, the membership query) go straight to their handler."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if RECORD_KEY_CONFIGS in message.content.config_records:
        return secaggplus_mod(message, context, call_next)
    return call_next(message, context)


def read_config(message):
    import json

    from distlab.config import validate_config

    return validate_config(json.loads(str(message.content[RECORD]["config"])))


def train_round(cfg, client: int, round_: int, arrays, context):
    """(named parameters, samples, mean loss, accuracy on the client's validation samples),
    from the global model as name -> array or a list in the model's order."""
    from distlab.federated.clients import client_batches, local_spec, train_client
    from distlab.federated.evaluation import local_accuracy
    from distlab.federated.types import Layout
    from distlab.models import build_model

    data, own = client_samples(cfg, client, context)
    model = build_model(cfg.model, data.input_shape, data.classes, cfg.seed)
    layout = Layout.of(model)
    if isinstance(arrays, list):
        arrays = dict(zip(layout.names, arrays, strict=True))
    start = layout.join(arrays)
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

    app = ClientApp(mods=[secure_mod])
    app.query()(answer_query)
    app.train()(answer_train)
    return app
