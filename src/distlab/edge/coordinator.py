"""Seed 001's edge algorithm: split the training set across N boards, train them all at once
(one thread per board, each streaming its shard over its own serial line), average their
weights by sample count, and test every model against a centralized float32 reference.

    with start_simulated_boards(3) as sim:
        result = train_on_ports(sim.ports, load_edge_data(), Hyper(epochs=2, lr=0.5, batch=16))
    result.average_accuracy, [b.matches_reference for b in result.boards]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from distlab.edge.board import Board, BoardCancelled, TrainStats, check_baud
from distlab.edge.data import EdgeData, shards
from distlab.edge.protocol import DEFAULT_BAUD, MAX_FEATURES
from distlab.edge.reference import accuracy, reference_train, same_bits
from distlab.edge.sim import start_simulated_boards
from distlab.edge.toolchain import build

# (board id, batches done, batches in all)
BoardProgress = Callable[[int, int, int], None]


@dataclass(frozen=True)
class Hyper:
    """The training settings every board, and the centralized reference, use."""

    epochs: int
    lr: float
    batch: int


@dataclass(frozen=True)
class BoardResult:
    """One board's run: its shard, its model's test accuracy, and whether its weights equal
    the float32 reference trained on the same shard bit for bit."""

    board_id: int
    port: str
    samples: int
    seconds: float
    resends: int
    bytes_sent: int
    bytes_received: int
    accuracy: float
    matches_reference: bool
    weights: list[float]
    bias: float


@dataclass(frozen=True)
class EdgeResult:
    dataset: str
    features: int
    hyper: Hyper
    boards: list[BoardResult]
    average_accuracy: float
    centralized_accuracy: float
    seconds: float
    average_weights: list[float]
    average_bias: float

    def to_dict(self) -> dict:
        return asdict(self)


def check_hyper(epochs: int, lr: float, batch: int) -> Hyper:
    if epochs < 1:
        raise ValueError(f"--epochs must be >= 1 (got {epochs})")
    if not lr > 0:
        raise ValueError(f"--lr must be > 0 (got {lr})")
    if batch < 1:
        raise ValueError(f"--batch must be >= 1 (got {batch})")
    return Hyper(epochs, lr, batch)


def average(models: list[tuple[np.ndarray, np.float32]], weights: list[int]):
    """Sample-weighted mean of (w, b) pairs, in float64, rounded to float32 once.

    >>> w, b = average([(np.float32([1, 2]), np.float32(0)), (np.float32([3, 4]), np.float32(1))],
    ...                [1, 3])
    >>> w.tolist(), float(b)
    ([2.5, 3.5], 0.75)
    """
    share = np.asarray(weights, dtype=np.float64) / float(sum(weights))
    w = sum(s * m[0].astype(np.float64) for s, m in zip(share, models, strict=True))
    b = sum(s * float(m[1]) for s, m in zip(share, models, strict=True))
    return np.asarray(w, dtype=np.float32), np.float32(b)


def train_on_ports(
    ports: list[str],
    data: EdgeData,
    hyper: Hyper,
    baud: int = DEFAULT_BAUD,
    timeout: float = 5.0,
    progress: BoardProgress | None = None,
    before_train: Callable[[list[Board]], None] | None = None,
) -> EdgeResult:
    """Open a Board per port (ids 0..N-1), handshake, train and evaluate; closes them all.
    `before_train` sees the boards once every one has answered (the CLI starts its progress
    bars there; tests inject faults)."""
    boards: list[Board] = []
    try:
        for board_id, port in enumerate(ports):
            boards.append(Board(port, board_id, baud=baud, timeout=timeout))
        for board in boards:
            board.hello()
        if before_train is not None:
            before_train(boards)
        return train_boards(boards, data, hyper, progress)
    finally:
        for board in boards:
            board.close()


def train_boards(
    boards: list[Board], data: EdgeData, hyper: Hyper, progress: BoardProgress | None = None
) -> EdgeResult:
    """Every board from zero weights on its shard, in parallel; then the average and the
    references. The first board to fail stops the others and is raised as BoardError."""
    start = time.monotonic()
    parts = shards(len(data.x_train), len(boards))
    for board in boards:
        board.set_weights(np.zeros(data.features, np.float32), 0.0)
    cancel = threading.Event()

    def run(board: Board, rows: np.ndarray) -> tuple[TrainStats, tuple]:
        try:
            report = None if progress is None else lambda d, t: progress(board.board_id, d, t)
            stats = board.train(
                data.x_train[rows], data.y_train[rows], hyper.epochs, hyper.lr, hyper.batch,
                progress=report, cancel=cancel,
            )  # fmt: skip
            return stats, board.get_weights()
        except BaseException:
            cancel.set()
            raise

    with ThreadPoolExecutor(len(boards), thread_name_prefix="edge-board") as pool:
        futures = [pool.submit(run, board, rows) for board, rows in zip(boards, parts, strict=True)]
    raise_first_failure(futures)
    outcomes = [f.result() for f in futures]
    return evaluate(boards, parts, outcomes, data, hyper, time.monotonic() - start)


def raise_first_failure(futures) -> None:
    """The board that failed on its own, not one stopped because another failed."""
    errors = [f.exception() for f in futures if f.exception() is not None]
    if not errors:
        return
    own = [e for e in errors if not isinstance(e, BoardCancelled)]
    raise (own or errors)[0]


def evaluate(boards, parts, outcomes, data: EdgeData, hyper: Hyper, seconds: float):
    zeros = np.zeros(data.features, np.float32)
    results = []
    for board, rows, (stats, (w, b)) in zip(boards, parts, outcomes, strict=True):
        x, y = data.x_train[rows], data.y_train[rows]
        rw, rb = reference_train(zeros, 0.0, x, y, hyper.epochs, hyper.lr, hyper.batch)
        results.append(
            BoardResult(
                board.board_id,
                board.port,
                len(rows),
                stats.seconds,
                stats.resends,
                stats.bytes_sent,
                stats.bytes_received,
                accuracy(w, b, data.x_test, data.y_test),
                same_bits(w, rw) and same_bits(np.float32([b]), np.float32([rb])),
                w.tolist(),
                float(b),
            )  # fmt: skip
        )
    avg_w, avg_b = average([o[1] for o in outcomes], [len(rows) for rows in parts])
    cw, cb = reference_train(
        zeros, 0.0, data.x_train, data.y_train, hyper.epochs, hyper.lr, hyper.batch
    )
    return EdgeResult(
        data.name, data.features, hyper, results,
        accuracy(avg_w, avg_b, data.x_test, data.y_test),
        accuracy(cw, cb, data.x_test, data.y_test),
        seconds, avg_w.tolist(), float(avg_b),
    )  # fmt: skip


def check_boards(sim: int | None, ports: list[str] | None, components: int, timeout: float):
    """One-line ValueErrors for `distlab edge train`'s choice of boards and sizes."""
    if (sim is None) == (not ports):
        raise ValueError("give either --sim N (simulated boards) or --port P (repeatable)")
    if sim is not None and sim < 1:
        raise ValueError(f"--sim must be >= 1 (got {sim})")
    if len(set(ports or [])) != len(ports or []):
        raise ValueError(f"--port names a port twice (got {', '.join(ports)})")
    if not 1 <= components <= MAX_FEATURES:
        raise ValueError(
            f"--components must be 1 to {MAX_FEATURES}, the features the firmware holds "
            f"(got {components})"
        )
    if not timeout > 0:
        raise ValueError(f"--timeout must be > 0 seconds (got {timeout})")


def run_edge(
    data: EdgeData,
    hyper: Hyper,
    sim: int | None = None,
    ports: list[str] | None = None,
    baud: int = DEFAULT_BAUD,
    timeout: float = 5.0,
    progress: BoardProgress | None = None,
    before_train: Callable[[list[Board]], None] | None = None,
) -> EdgeResult:
    """Train on `sim` simulated boards (started here, stopped at the end) or on real ones at
    `ports`."""
    check_baud(baud)
    if sim is None:
        return train_on_ports(list(ports), data, hyper, baud, timeout, progress, before_train)
    built = build(baud)
    with start_simulated_boards(sim, built.elf, built.runner) as boards:
        return train_on_ports(boards.ports, data, hyper, baud, timeout, progress, before_train)
