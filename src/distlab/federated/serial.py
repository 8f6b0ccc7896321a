"""Serial executor: each client is a microcontroller board on a serial line (distlab.edge).

Board i hosts client i. Each round the sampled clients' boards get the global weights
(SETW), train on their client's shard streamed in batches (plain SGD on the logistic loss,
the firmware's float32 arithmetic) and send their weights back (GETW), all boards at once,
one thread each. The model is binary logistic regression (`logreg` on a two-class dataset:
one weight per feature and a bias). A board that stops answering is a lost client, named
with the driver's error, and is not asked again; the round goes on when min_clients allows.
Every byte on the wire is counted in the Communicator, so traffic is measured as for the
other executors. The board rules (line speed, firmware toolchain, the model a board holds)
are checked here before any board is opened.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch

from distlab.federated.clients import ClientData, LocalSpec
from distlab.federated.types import Layout, Updates

if TYPE_CHECKING:
    from distlab.config import RunConfig
    from distlab.federated.executors import ClientSetup


class SerialExecutor:
    """Server side: one board per client, trained in parallel over their serial lines."""

    def __init__(self, boards, data: ClientData, x, y, layout: Layout, spec: LocalSpec, lr,
                 comm, recorder, simulated=None):  # fmt: skip
        self.boards, self.data, self.layout, self.spec = boards, data, layout, spec
        self.x = np.ascontiguousarray(x.reshape(len(x), -1).numpy(), dtype=np.float32)
        self.y = y.numpy().astype(np.int64)
        self.lr, self.comm, self.recorder, self.simulated = lr, comm, recorder, simulated
        self.lost: dict[int, str] = {}

    def train(self, round_: int, start: torch.Tensor, clients: np.ndarray) -> Updates:
        weight, bias = self.unpack(start)
        todo = [c for c in clients.tolist() if c not in self.lost]
        with ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
            futures = {c: pool.submit(self.train_board, c, weight, bias) for c in todo}
            results = {c: self.outcome(f) for c, f in futures.items()}
        replies, sizes, losses, lost = [], [], [], {}
        for client in clients.tolist():
            result = results.get(client)
            if result is None or isinstance(result, str):
                why = result or self.lost[client]
                self.lost.setdefault(client, why)
                lost[client] = f"lost: {why}"
                self.emit(round_, client, status="lost", reason=why)
                replies.append(None)
                sizes.append(0)
                losses.append(float("nan"))
                continue
            named, samples, loss, info = result
            replies.append(named)
            sizes.append(samples)
            losses.append(loss)
            self.emit(round_, client, status="trained", samples=samples, loss=loss, **info)
        return Updates.from_named(clients, replies, sizes, {"loss": losses}, self.layout, lost)

    def train_board(self, client: int, weight: np.ndarray, bias: np.float32):
        """One board's round: (named parameters, samples, loss after training, event info)."""
        board = self.boards[client]
        own = self.data.train[client]
        x, y = self.x[own], self.y[own]
        sent, received = board.bytes_sent, board.bytes_received
        begin = time.perf_counter()
        try:
            board.set_weights(weight, bias)
            batch = self.spec.batch or len(own)
            stats = board.train(x, y, self.spec.epochs, self.lr, batch)
            new_w, new_b = board.get_weights()
        finally:
            self.comm.count(board.bytes_sent - sent, board.bytes_received - received)
        seconds = time.perf_counter() - begin
        named = self.pack(new_w, new_b)
        info = {"train_seconds": seconds, "address": board.port, "resends": stats.resends}
        return named, len(own), logistic_loss(new_w, new_b, x, y), info

    @staticmethod
    def outcome(future):
        """The board's result, or the one line of the error that lost it."""
        from distlab.edge.board import BoardError

        try:
            return future.result()
        except (BoardError, OSError) as exc:
            return str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    def unpack(self, flat: torch.Tensor) -> tuple[np.ndarray, np.float32]:
        weight, bias = self.layout.split(flat.detach()).values()
        return weight.reshape(-1).numpy().astype(np.float32), np.float32(bias.reshape(-1)[0])

    def pack(self, weight: np.ndarray, bias) -> dict[str, np.ndarray]:
        (w_name, w_shape), (b_name, b_shape) = zip(self.layout.names, self.layout.shapes,
                                                   strict=True)  # fmt: skip
        return {
            w_name: np.asarray(weight, dtype=np.float32).reshape(w_shape),
            b_name: np.full(b_shape, bias, dtype=np.float32),
        }

    def emit(self, round_: int, client: int, **fields) -> None:
        self.recorder.emit("client", round=round_, client=client, **fields)

    def close(self) -> None:
        for board in self.boards:
            board.close()
        if self.simulated is not None:
            self.simulated.stop()


def logistic_loss(weight: np.ndarray, bias, x: np.ndarray, y: np.ndarray) -> float:
    """Mean -log p(y | x) of the board's model, in float64 (a measurement, not the board's
    arithmetic)."""
    z = x.astype(np.float64) @ np.asarray(weight, dtype=np.float64) + float(bias)
    signed = np.where(y == 1, z, -z)
    return float(np.mean(np.logaddexp(0.0, -signed)))


def open_boards(cfg) -> tuple[list, object]:
    """The run's boards, greeted (HELLO checks the firmware): simulated ones started for
    edge.boards, or the real ones on edge.ports; (boards, simulators or None)."""
    from distlab.edge.board import Board

    edge = cfg.edge
    simulated = None
    ports = list(edge.ports)
    if edge.boards:
        from distlab.edge.sim import start_simulated_boards

        simulated = start_simulated_boards(edge.boards, baud=edge.baud)
        ports = simulated.ports
    boards = []
    try:
        for i, port in enumerate(ports):
            boards.append(Board(port, i, edge.baud, edge.timeout))
            boards[-1].hello()
    except BaseException:
        for board in boards:
            board.close()
        if simulated is not None:
            simulated.stop()
        raise
    return boards, simulated


# --- the executor table's entry (executors.py) -------------------------------------------------


def check_serial(cfg: RunConfig) -> None:
    """Board i hosts client i, and a board runs plain SGD on the logistic loss."""
    edge, p = cfg.edge, cfg.strategy
    if edge.boards and edge.ports:
        raise ValueError("give edge.boards (simulated) or edge.ports (real boards), not both")
    count = edge.boards or len(edge.ports)
    if not count:
        raise ValueError(
            "executor serial needs boards: --set edge.boards=N (simulated) or "
            "--set edge.ports=[/dev/ttyACM0,...]"
        )
    if count != p.clients:
        raise ValueError(f"each board hosts one client: {count} boards for {p.clients} clients")
    check_line(cfg)
    opt = cfg.optimizer
    if opt.name != "sgd" or opt.momentum or opt.weight_decay:
        raise ValueError("a board trains with plain SGD: optimizer sgd, no momentum or decay")
    if p.mu:
        raise ValueError("a board has no proximal term: strategy.mu must be 0 with executor serial")


def check_line(cfg: RunConfig) -> None:
    """The line speed is one the firmware is built for; simulated boards need the firmware
    and simavr toolchain, real ones their ports."""
    from distlab.edge.protocol import BAUD_RATES

    edge = cfg.edge
    if edge.baud not in BAUD_RATES:
        allowed = ", ".join(map(str, BAUD_RATES))
        raise ValueError(f"edge.baud must be one of {allowed} (got {edge.baud})")
    if edge.boards:
        from distlab.edge.toolchain import FIRMWARE_NEEDS, RUNNER_NEEDS, missing_message

        problem = missing_message(FIRMWARE_NEEDS + RUNNER_NEEDS)
        if problem:
            raise ValueError(f"simulated boards: building the firmware and simavr runner {problem}")
    missing = [port for port in edge.ports if not os.path.exists(port)]
    if missing:
        raise ValueError(f"edge.ports: {missing[0]} does not exist")


def check_serial_data(cfg: RunConfig, data) -> None:
    """The board's model: binary logistic regression on at most MAX_FEATURES features."""
    from distlab.edge.protocol import MAX_FEATURES

    features = math.prod(data.input_shape)
    if cfg.model != "logreg" or data.classes != 2:
        raise ValueError(
            "a board trains binary logistic regression: --model logreg on a two-class dataset "
            f"(got model {cfg.model!r} on {cfg.dataset} with {data.classes} classes; try "
            "--dataset breast-cancer)"
        )
    if features > MAX_FEATURES:
        raise ValueError(
            f"the firmware holds at most {MAX_FEATURES} features; {cfg.dataset} has {features}"
        )


def start_serial(setup: ClientSetup) -> SerialExecutor:
    """The boards, greeted; each trains its client's shard."""
    ctx = setup.ctx
    boards, simulated = open_boards(ctx.cfg)
    return SerialExecutor(
        boards, setup.data, ctx.data.x_train, ctx.data.y_train, Layout.of(setup.model),
        setup.spec, ctx.cfg.optimizer.lr, ctx.comm, ctx.recorder, simulated,
    )  # fmt: skip
