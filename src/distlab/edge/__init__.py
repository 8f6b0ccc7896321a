"""Edge boards: Arduino Unos (real, or simulated on simavr) that train logistic regression
over a serial line. See docs/edge.md for the commands and docs/edge-protocol.md for the wire.

- protocol: framing, CRC-16, float32 as hex, the messages
- reference: the boards' float32 arithmetic in numpy, bit for bit
- board: Board, the driver of one board over pyserial
- sim: start_simulated_boards, one simavr runner per board behind a pty
- toolchain: build the firmware and the runner, and say which Debian package is missing
- data: breast-cancer (embedded) and Kaggle Titanic preprocessing
- coordinator: train N boards in parallel and average their weights
"""

from distlab.edge.board import Board, BoardConfigError, BoardError, BoardInfo, TrainStats
from distlab.edge.protocol import BAUD_RATES, DEFAULT_BAUD, MAX_FEATURES
from distlab.edge.reference import reference_train
from distlab.edge.sim import SimulatedBoards, start_simulated_boards

__all__ = [
    "BAUD_RATES",
    "DEFAULT_BAUD",
    "MAX_FEATURES",
    "Board",
    "BoardConfigError",
    "BoardError",
    "BoardInfo",
    "SimulatedBoards",
    "TrainStats",
    "reference_train",
    "start_simulated_boards",
]
