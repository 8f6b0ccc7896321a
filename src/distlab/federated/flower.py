"""Flower executor: the sampled clients train on SuperNodes of Flower's deployment engine.

The server side of a deployed run (distlab deploy server, distlab deploy local). It runs in
Flower's ServerApp process, which hands it a `Grid`: each SuperNode announces which client
(partition) it is in answer to a "query" message, then each round the sampled clients' nodes
get a "train" message with the global parameters (an ArrayRecord of the model's named
arrays, sent as .npy bytes: no pickle) and the round, and answer with their parameters,
sample count and metrics. A node that answers with an error, does not answer within the
round's timeout, or is gone from the SuperLink is a lost client: it fails the round (the
round event's `failed`; `rejected` is for replies that came and were unusable), and the
round goes on with the rest when min_clients allows, exactly as after an injected failure.
Every client's outcome is a `client` event (the dashboard's source), a lost one's with the
reason.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from distlab.federated.types import Layout, Updates

if TYPE_CHECKING:
    from distlab.federated.executors import ClientSetup

QUERY = "query"
TRAIN = "train"
# The ConfigRecord that carries distlab's settings in both directions.
RECORD = "distlab"


@dataclass(frozen=True)
class FlowerSettings:
    """How long the server waits: for the clients to connect before round 1, and for one
    round's replies (a killed SuperNode is reported by the SuperLink after its heartbeat
    lapses, about a minute)."""

    clients: int
    connect_timeout: float = 120.0
    round_timeout: float = 180.0
    poll_seconds: float = 1.0


@dataclass
class ClientNode:
    """What the server knows of the SuperNode that hosts one client."""

    node: int
    address: str = ""
    status: str = "connected"
    last_seen: float = 0.0
    rounds: int = 0


class FlowerExecutor:
    """Server side: client ids -> SuperNodes, one train message per sampled client."""

    def __init__(self, grid, layout: Layout, config_json: str, recorder, comm, settings):
        self.grid, self.layout, self.config_json = grid, layout, config_json
        self.recorder, self.comm, self.settings = recorder, comm, settings
        self.clients: dict[int, ClientNode] = {}
        self.asked: set[int] = set()  # node ids already asked which client they host
        self.secure = None  # flower_secagg.SecureRounds when secagg.enabled

    # --- who is connected ---------------------------------------------------------------

    def connect(self) -> None:
        """Wait until every client's node has announced itself, or the connect timeout
        passes; fewer than all is an error naming the missing clients."""
        deadline = time.monotonic() + self.settings.connect_timeout
        while True:
            self.discover()
            missing = sorted(set(range(self.settings.clients)) - set(self.clients))
            if not missing:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{len(self.clients)} of {self.settings.clients} clients connected "
                    f"within {self.settings.connect_timeout:g} s; missing clients: "
                    f"{', '.join(map(str, missing))} (start them with distlab deploy client)"
                )
            time.sleep(self.settings.poll_seconds)

    def discover(self) -> set[int]:
        """Ask every node not asked before which client it hosts; the nodes connected now."""
        live = {int(n) for n in self.grid.get_node_ids()}
        nodes = sorted(live - self.asked)
        if not nodes:
            return live
        messages = [
            self.message(node, QUERY, {"config": self.config_json}, "query") for node in nodes
        ]
        replies = self.grid.send_and_receive(messages, timeout=self.settings.round_timeout)
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        for reply in replies:
            node = sent.get(reply.metadata.reply_to_message_id)
            if node is None:
                continue
            self.asked.add(node)
            if reply.has_error():
                self.recorder.emit("client", node=node, status="refused", reason=reply.error.reason)
                continue
            info = dict(reply.content[RECORD])
            self.join(node, info)
        return live

    def join(self, node: int, info: dict) -> None:
        client = int(info["partition_id"])
        if not 0 <= client < self.settings.clients or client in self.clients:
            why = "already connected" if client in self.clients else "outside the federation"
            self.recorder.emit(
                "client",
                client=client,
                node=node,
                status="refused",
                reason=f"partition id {client} {why}",
            )
            return
        self.clients[client] = ClientNode(node, str(info.get("address", "")), last_seen=time.time())
        self.recorder.emit(
            "client",
            client=client,
            node=node,
            status="connected",
            address=self.clients[client].address,
        )

    # --- one round ------------------------------------------------------------------------

    def train(self, round_: int, start: torch.Tensor, clients: np.ndarray) -> Updates:
        live = self.discover()  # and ask a node that (re)joined since the last round
        if self.secure is not None:
            return self.secure.train(self, round_, start, clients, live)
        arrays = {n: v.numpy() for n, v in self.layout.split(start.detach()).items()}
        messages, lost = {}, {}
        for client in clients.tolist():
            host = self.clients.get(client)
            if host is None or host.status == "lost" or host.node not in live:
                lost[client] = "lost: not connected"
                continue
            settings = {"config": self.config_json, "round": round_, "client": client}
            messages[client] = self.message(host.node, TRAIN, settings, str(round_), arrays)
        begin = time.perf_counter()
        replies = self.exchange(messages)
        seconds = time.perf_counter() - begin
        return self.collect(round_, clients, messages, replies, lost, seconds)

    def exchange(self, messages: dict) -> dict:
        """Send, wait for the replies (at most the round timeout); message id -> reply."""
        if not messages:
            return {}
        for m in messages.values():
            self.comm.count(message_bytes(m), 0)
        replies = self.grid.send_and_receive(
            list(messages.values()), timeout=self.settings.round_timeout
        )
        return {r.metadata.reply_to_message_id: r for r in replies}

    def collect(self, round_, clients, messages, replies, lost, seconds) -> Updates:
        rows, sizes, losses, fields = [], [], [], []
        for client in clients.tolist():
            sent = messages.get(client)
            reply = replies.get(sent.metadata.message_id) if sent is not None else None
            named, size, loss, info = self.read_reply(round_, client, sent, reply, lost)
            rows.append(named)
            sizes.append(size)
            losses.append(loss)
            fields.append(info)
        for client, info in zip(clients.tolist(), fields, strict=True):
            self.recorder.emit("client", round=round_, client=client, **info)
        metrics = {"loss": losses}
        return Updates.from_named(clients, rows, sizes, metrics, self.layout, lost)

    def read_reply(self, round_, client, sent, reply, lost):
        """(named arrays or None, samples, loss, the client event's fields)."""
        host = self.clients.get(client)
        if sent is None:
            why = lost[client].removeprefix("lost: ")
            return None, 0, float("nan"), {"status": "lost", "reason": why}
        if reply is None:
            lost[client] = f"lost: no reply within {self.settings.round_timeout:g} s"
        elif reply.has_error():
            lost[client] = f"lost: {reply.error.reason or 'error ' + str(reply.error.code)}"
        if client in lost:
            host.status = "lost"
            why = lost[client].removeprefix("lost: ")
            return None, 0, float("nan"), {"status": "lost", "reason": why, "node": host.node}
        self.comm.count(0, message_bytes(reply))
        arrays = reply.content["params"]
        named = {name: arrays[name].numpy() for name in arrays.keys()}
        info = dict(reply.content[RECORD])
        host.last_seen, host.rounds, host.status = time.time(), host.rounds + 1, "trained"
        fields = {
            "status": "trained",
            "node": host.node,
            "address": host.address,
            "samples": int(info["samples"]),
            "loss": float(info["loss"]),
            "train_seconds": float(info["train_seconds"]),
            "val_accuracy": info.get("val_accuracy"),
        }
        return named, int(info["samples"]), float(info["loss"]), fields

    def message(self, node: int, kind: str, settings: dict, group: str, arrays=None):
        from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

        content = {RECORD: ConfigRecord(settings)}
        if arrays is not None:
            content["params"] = ArrayRecord(numpy_ndarrays_named(arrays))
        return Message(RecordDict(content), dst_node_id=node, message_type=kind, group_id=group)

    def close(self) -> None:
        pass


def numpy_ndarrays_named(arrays: dict[str, np.ndarray]):
    """An ArrayRecord's input: name -> flwr Array, in the layout's order."""
    from flwr.app import Array

    return {name: Array(np.ascontiguousarray(a)) for name, a in arrays.items()}


def message_bytes(message) -> int:
    """The bytes a message's records carry (arrays and the settings' JSON), the figure the
    run's traffic counts; Flower's own framing adds a little."""
    total = 0
    content = message.content
    for name in content.keys():
        record = content[name]
        if hasattr(record, "to_numpy_ndarrays"):
            total += sum(int(a.nbytes) for a in record.to_numpy_ndarrays())
        else:
            total += len(json.dumps(dict(record), default=str))
    return total


def deployed_summary(lead: list[dict]) -> dict:
    """What ran in a deployed run, from the ServerApp's client events: `workers`, the clients
    whose SuperNode joined (each a client host, as the hosts of `--workers` in process), and
    `processes`, the ServerApp plus those SuperNodes, as an in-process run counts its server
    and hosts. Flower's SuperLink and helpers, and the ClientApp process a SuperNode starts
    per message, are not counted. Both null when no client joined before the run ended."""
    joined = {e.get("client") for e in lead
              if e.get("kind") == "client" and e.get("status") == "connected"}  # fmt: skip
    if not joined:
        return {"workers": None, "processes": None}
    return {"workers": len(joined), "processes": len(joined) + 1}


def start_flower(setup: ClientSetup) -> FlowerExecutor:
    """The executor table's entry (executors.py). The Grid and timeouts come from the
    ServerApp that runs this rank (deploy/serverapp.py); it waits for every client's
    SuperNode before round 1."""
    ctx = setup.ctx
    shared = ctx.shared or {}
    if "grid" not in shared:
        raise ValueError("executor flower runs under distlab deploy server or deploy local")
    executor = FlowerExecutor(
        shared["grid"],
        Layout.of(setup.model),
        ctx.cfg.to_json(),
        ctx.recorder,
        ctx.comm,
        shared["flower"],
    )
    if ctx.cfg.secagg.enabled:  # Flower's SecAgg+ workflow, weights <= 1 sample share
        from distlab.federated.flower_secagg import SecureRounds

        samples = max(1, len(ctx.data.y_train))
        timeout = shared["flower"].round_timeout
        executor.secure = SecureRounds(ctx.cfg, timeout, samples, message_bytes)
    executor.connect()
    return executor
