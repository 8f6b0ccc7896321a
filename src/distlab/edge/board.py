"""A board running the edge_lr firmware, driven over a serial line with pyserial: the same code
for a real Uno on /dev/ttyACM0 and for a simulated one behind a pty (distlab.edge.sim).

Every request is retried: a reply that does not come within its share of `timeout`, a NAK, or
a reply whose CRC is wrong makes the host send the request again (every request is safe to
repeat: a batch carries a sequence number and the board applies each one once). A board that
stays silent for `timeout` seconds, or whose port closes, raises BoardError naming it.

    with Board("/dev/ttyACM0", board_id=0) as board:
        info = board.hello()
        board.set_weights(np.zeros(8, np.float32), 0.0)
        stats = board.train(x, y, epochs=5, lr=0.1, batch=16)
        w, b = board.get_weights()
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import distlab.edge.protocol as protocol
from distlab.edge.protocol import FrameError, Reply
from distlab.edge.reference import batch_sizes

DEFAULT_TIMEOUT = 5.0
BOOT_TIMEOUT = 5.0  # a real Uno resets when its port opens and sits in the bootloader ~2 s
READ_SLICE = 0.02


class BoardError(RuntimeError):
    """A board that stopped answering, reset, or refused a request; the message names it."""

    def __init__(self, message: str, board_id: int | None = None, port: str | None = None):
        super().__init__(message)
        self.board_id = board_id
        self.port = port


class BoardCancelled(BoardError):
    """Training stopped by the host (another board failed), not by this board."""


class BoardConfigError(BoardError, ValueError):
    """Bad input rather than a failure: a port that does not exist or is busy, the wrong
    firmware, more features than it holds, a baud rate the protocol does not allow."""


@dataclass(frozen=True)
class BoardInfo:
    """What HELLO says: the id the board now answers to and what its firmware can do."""

    board_id: int
    firmware: str
    version: int
    max_features: int


@dataclass(frozen=True)
class BoardStat:
    """What STAT says: free RAM (bytes between heap and stack) and lifetime counters."""

    free_ram: int
    samples_seen: int
    batches_applied: int
    naks: int
    training: bool


@dataclass(frozen=True)
class TrainStats:
    """One `Board.train`: samples and batches the board applied, wall seconds, how many batch
    frames had to be sent again, and the bytes on the wire during it."""

    samples: int
    batches: int
    seconds: float
    resends: int
    bytes_sent: int
    bytes_received: int


GARBLED = Reply("GARBLED", ())  # a line that failed its CRC or was no frame at all

Progress = Callable[[int, int], None]  # (batches done, batches in all)


def check_baud(baud: int) -> int:
    if baud not in protocol.BAUD_RATES:
        allowed = ", ".join(map(str, protocol.BAUD_RATES))
        raise BoardConfigError(f"--baud must be one of {allowed} (got {baud})")
    return baud


class Board:
    """One board on one serial port. `bytes_sent` and `bytes_received` count every byte on the
    wire (frames, resends and stray lines included)."""

    def __init__(
        self,
        port: str,
        board_id: int,
        baud: int = protocol.DEFAULT_BAUD,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 2,
    ):
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds (got {timeout})")
        self.port = port
        self.board_id = board_id
        self.baud = check_baud(baud)
        self.timeout = timeout
        self.retries = retries
        self.bytes_sent = 0
        self.bytes_received = 0
        self.info: BoardInfo | None = None
        self.features: int | None = None
        self._pending = b""
        self._corrupt = 0
        self._serial = open_port(port, baud, board_id)

    # ---- lifecycle ----

    def close(self) -> None:
        self._serial.close()

    def __enter__(self) -> Board:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        return f"board {self.board_id} ({self.port})"

    def error(self, message: str) -> BoardError:
        return BoardError(f"{self.name} {message}", self.board_id, self.port)

    # ---- requests ----

    def hello(self, boot_timeout: float = BOOT_TIMEOUT) -> BoardInfo:
        """Handshake: HELLO every half second until the board answers (a real Uno is still in
        its bootloader for about 2 s after the port opens). Checks the firmware."""
        self._serial.reset_input_buffer()
        self._pending = b""
        wait = max(boot_timeout, self.timeout)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            self._write(protocol.encode_frame(protocol.hello(self.board_id)))
            slice_end = min(deadline, time.monotonic() + 0.5)
            reply = self._await("HELLO", "HELLO", slice_end, boot_ok=True)
            if reply is not None:
                self.info = self._check_hello(reply)
                return self.info
        raise self.error(f"did not answer HELLO within {wait:g} s")

    def ping(self) -> float:
        """Round trip time in seconds."""
        start = time.monotonic()
        self.request("PING", "PONG")
        return time.monotonic() - start

    def stat(self) -> BoardStat:
        r = self.request("STAT", "STAT")
        return BoardStat(r.int(0), r.int(1), r.int(2), r.int(3), r.int(4) == 1)

    def set_weights(self, w: np.ndarray, b: float) -> None:
        """Load weights (float32, one per feature) and bias; training starts from them."""
        w = np.asarray(w, dtype=np.float32).reshape(-1)
        self._check_features(len(w))
        self.request(protocol.set_weights(w, b), "OK")
        self.features = len(w)

    def get_weights(self) -> tuple[np.ndarray, np.float32]:
        return protocol.parse_weights(self.request("GETW", "W"))

    def predict(self, x: np.ndarray) -> tuple[np.float32, np.float32]:
        """(logit, probability of label 1) for one sample, computed on the board."""
        r = self.request(protocol.predict(np.asarray(x, dtype=np.float32)), "P")
        return protocol.hex_to_float(r.fields[0]), protocol.hex_to_float(r.fields[1])

    def train(
        self,
        x: np.ndarray,
        y: np.ndarray,
        epochs: int,
        lr: float,
        batch: int,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> TrainStats:
        """Stream (x, y) to the board `epochs` times in batches of `batch`, in order, from the
        weights it holds (set them first with set_weights). The result equals
        distlab.edge.reference.reference_train bit for bit."""
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y)
        check_training(x, y, epochs, lr, batch, self.features)
        sizes = batch_sizes(len(x), batch)
        start, sent0, recv0 = time.monotonic(), self.bytes_sent, self.bytes_received
        total = self.request(protocol.train(epochs, lr, len(x), batch, x.shape[1]), "OK").int(1)
        resends, seq = 0, 0
        for _ in range(epochs):
            offset = 0
            for size in sizes:
                if cancel is not None and cancel.is_set():
                    raise BoardCancelled(f"{self.name} stopped: another board failed")
                rows = slice(offset, offset + size)
                resends += self._send_batch(seq, protocol.batch(seq, x[rows], y[rows]))
                offset += size
                seq += 1
                if progress is not None:
                    progress(seq, total)
        done = self.request("DONE", "DONE")
        if done.int(0) != total:
            raise self.error(f"applied {done.int(0)} of {total} batches")
        return TrainStats(
            done.int(1), total, time.monotonic() - start, resends,
            self.bytes_sent - sent0, self.bytes_received - recv0,
        )  # fmt: skip

    def corrupt_next_batches(self, count: int = 1) -> None:
        """Test hook: the next `count` batch frames go out with a wrong CRC, as line noise
        would leave them; the board must NAK each and the host send it again."""
        self._corrupt += count

    def request(self, payload: str, expect: str) -> Reply:
        """Send one request and return the reply whose first word is `expect`, resending on
        silence, NAK or a garbled reply; BoardError after `timeout` seconds or an ERR."""
        frame = protocol.encode_frame(payload)
        command = payload.split(" ", 1)[0]
        deadline = time.monotonic() + self.timeout + self._wire_seconds(len(frame))
        for _ in range(self.retries + 1):
            self._write(frame)
            reply = self._await(command, expect, self._attempt_deadline(deadline, len(frame)))
            if reply is not None:
                return reply
        raise self.error(f"did not answer {command} within {self.timeout:g} s")

    # ---- internals ----

    def _send_batch(self, seq: int, payload: str) -> int:
        """Send batch `seq` until the board acknowledges it; returns how many resends it took."""
        frame = protocol.encode_frame(payload)
        deadline = time.monotonic() + self.timeout + self._wire_seconds(len(frame))
        naks = 0
        attempt = 0
        while True:
            self._write(self._maybe_corrupted(frame))
            reply = self._read_reply(self._attempt_deadline(deadline, len(frame)), seq)
            if reply is not None and reply.kind == "ACK" and reply.int(0) == seq:
                return attempt
            if reply is not None and reply.kind == "NAK":
                naks += 1
                if reply.int(0) != seq:
                    raise self.error(f"expects batch {reply.int(0)}, the host is at {seq}")
                if naks > 3 * (self.retries + 1):
                    raise self.error(f"refused batch {seq} {naks} times ({reply.fields[-1]})")
            elif reply is not None and reply.kind == "ERR":
                raise self.error(f"refused batch {seq}: {' '.join(reply.fields)}")
            elif time.monotonic() >= deadline:
                raise self.error(f"did not acknowledge batch {seq} within {self.timeout:g} s")
            attempt += 1

    def _attempt_deadline(self, deadline: float, size: int) -> float:
        # Resend after a share of the timeout, but never before the frame could have arrived.
        share = max(self.timeout / (self.retries + 1), 2 * self._wire_seconds(size))
        return min(deadline, time.monotonic() + share)

    def _wire_seconds(self, size: int) -> float:
        return 10 * size / self.baud  # 8N1: ten bits a byte

    def _maybe_corrupted(self, frame: bytes) -> bytes:
        if self._corrupt <= 0:
            return frame
        self._corrupt -= 1
        crc = int(frame[-5:-1], 16) ^ 0x0001
        return frame[:-5] + b"%04x\n" % crc

    def _write(self, data: bytes) -> None:
        """Write in chunks that each must leave within `timeout`: a board that stops reading
        (its line stays full) is named in time, however long the frame."""
        if self._serial.write_timeout != self.timeout:
            self._serial.write_timeout = self.timeout
        chunk = max(64, min(4096, int(self.baud / 10 * self.timeout / 2)))
        for start in range(0, len(data), chunk):
            try:
                self._serial.write(data[start : start + chunk])
            except (OSError, ValueError) as exc:  # pyserial's exceptions are OSErrors
                raise self._write_error(exc) from None
            self.bytes_sent += min(chunk, len(data) - start)

    def _write_error(self, exc: Exception) -> BoardError:
        import serial

        if isinstance(exc, serial.SerialTimeoutException):
            return self.error(f"stopped reading: its line stayed full for {self.timeout:g} s")
        return self.error(f"cannot be written to: {exc}")

    def _read_line(self, deadline: float) -> bytes | None:
        """One line (up to '\\n'), or None at the deadline; BoardError if the port closes."""
        while b"\n" not in self._pending:
            if time.monotonic() >= deadline:
                return None
            try:
                chunk = self._serial.read(max(1, self._serial.in_waiting))
            except (OSError, ValueError) as exc:  # pyserial's SerialException is an OSError
                raise self.error(f"stopped answering: its port closed ({exc})") from None
            self.bytes_received += len(chunk)
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line

    def _read_reply(
        self, deadline: float, stale_seq: int | None = None, boot_ok: bool = False
    ) -> Reply | None:
        """The next reply, or None at the deadline. A garbled line comes back as GARBLED (the
        caller sends again); a late ACK of a batch before `stale_seq` is skipped; a boot
        banner is skipped during the handshake and means a reset anywhere else."""
        while True:
            line = self._read_line(deadline)
            if line is None:
                return None
            try:
                reply = protocol.parse_reply(protocol.decode_frame(line))
            except FrameError:
                return GARBLED
            if reply.kind == "BOOT":
                if boot_ok:
                    continue
                raise self.error("restarted (its weights and training state are lost)")
            if stale_seq is not None and reply.kind == "ACK" and reply.int(0) < stale_seq:
                continue
            return reply

    def _await(
        self, command: str, expect: str, deadline: float, boot_ok: bool = False
    ) -> Reply | None:
        """The reply whose first word is `expect`, skipping stray lines; None when the request
        should be sent again (silence until `deadline`, a NAK, a garbled line)."""
        while True:
            reply = self._read_reply(deadline, boot_ok=boot_ok)
            if reply is None or reply.kind == "NAK" or (reply is GARBLED and not boot_ok):
                return None
            if reply.kind == "ERR":
                raise self.error(f"refused {command}: {' '.join(reply.fields)}")
            if reply.kind == expect:
                return reply

    def _check_hello(self, reply: Reply) -> BoardInfo:
        fields = reply.fields
        if len(fields) != 4 or fields[1] != protocol.FIRMWARE_NAME:
            raise BoardConfigError(
                f"{self.name} does not run {protocol.FIRMWARE_NAME} (it said {' '.join(fields)})",
                self.board_id, self.port,
            )  # fmt: skip
        info = BoardInfo(reply.int(0), fields[1], reply.int(2), reply.int(3))
        if info.version != protocol.FIRMWARE_VERSION:
            raise BoardConfigError(
                f"{self.name} runs {info.firmware} version {info.version}; this host speaks "
                f"version {protocol.FIRMWARE_VERSION} (flash it: make -C firmware upload)",
                self.board_id, self.port,
            )  # fmt: skip
        if info.board_id != self.board_id:
            raise self.error(f"answered HELLO as board {info.board_id}")
        return info

    def _check_features(self, features: int) -> None:
        limit = self.info.max_features if self.info else protocol.MAX_FEATURES
        if not 1 <= features <= limit:
            raise BoardConfigError(
                f"{self.name} holds 1 to {limit} features (got {features})",
                self.board_id, self.port,
            )  # fmt: skip


def check_training(
    x: np.ndarray, y: np.ndarray, epochs: int, lr: float, batch: int, features: int | None
) -> None:
    """ValueError naming the bad argument of Board.train."""
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x must be (samples, features) with one label each (got {x.shape})")
    if features != x.shape[1]:
        raise ValueError(
            f"the board holds {features} weights, the samples have {x.shape[1]} features "
            "(call set_weights first)"
        )
    if not set(np.unique(y).tolist()) <= {0, 1}:
        raise ValueError("labels must be 0 or 1")
    if epochs < 1 or not 1 <= batch <= protocol.MAX_BATCH or not lr > 0:
        raise ValueError(
            f"epochs must be >= 1, batch 1 to {protocol.MAX_BATCH} and lr > 0 "
            f"(got {epochs}, {batch}, {lr})"
        )


def open_port(port: str, baud: int, board_id: int):
    """The serial port, opened exclusively; BoardConfigError if it is missing or busy."""
    import serial

    try:
        return serial.Serial(port, baud, timeout=READ_SLICE, write_timeout=30, exclusive=True)
    except serial.SerialException as exc:
        why = PORT_ERRORS.get(getattr(exc, "errno", None), f"cannot be opened ({exc})")
        raise BoardConfigError(f"port {port} {why} (board {board_id})", board_id, port) from None


PORT_ERRORS = {
    errno.ENOENT: "does not exist",
    errno.EAGAIN: "is busy: another program has it open",
    errno.EBUSY: "is busy: another program has it open",
    errno.EACCES: "cannot be opened: permission denied (on Linux, join the dialout group)",
}
