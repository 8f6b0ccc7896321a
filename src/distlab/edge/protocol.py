"""The edge boards' line protocol: framing, CRC-16, float32 as hex, the messages (see
docs/edge-protocol.md; the firmware side is firmware/edge_lr/edge_lr.ino).

A frame is one ASCII line, `PAYLOAD*CRC\\n`, where CRC is the CRC-16/CCITT-FALSE of PAYLOAD in
four lowercase hex digits:

>>> encode_frame("PING")
b'PING*6427\\n'
>>> decode_frame(b'PING*6427\\n')
'PING'
>>> float_to_hex(1.0), hex_to_float("bf800000")
('3f800000', np.float32(-1.0))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIRMWARE_NAME = "edge_lr"
FIRMWARE_VERSION = 1
MAX_FEATURES = 32  # the firmware's MAX_FEATURES: weights a board holds
MAX_BATCH = 60000  # the firmware's MAX_BATCH: samples in one batch line
# Line speeds the protocol allows: above about 250000 baud the Uno's 64-byte receive buffer
# overflows while a sample is being learned from; 115200 is what real boards do reliably.
BAUD_RATES = (9600, 19200, 38400, 57600, 115200)
DEFAULT_BAUD = 115200


class FrameError(ValueError):
    """A line that is not a well-formed frame, or whose CRC does not match."""


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: polynomial 0x1021, initial value 0xFFFF, no reflection, no final XOR.

    >>> hex(crc16(b"123456789"))
    '0x29b1'
    """
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def encode_frame(payload: str) -> bytes:
    """`payload` framed for the wire: ASCII, no '*' and no line breaks."""
    if "*" in payload or "\n" in payload or "\r" in payload:
        raise ValueError(f"a payload cannot hold '*' or a line break (got {payload!r})")
    data = payload.encode("ascii")
    return data + b"*%04x\n" % crc16(data)


def decode_frame(line: bytes) -> str:
    """The payload of one received line; FrameError if it is malformed or its CRC is wrong."""
    text = line.rstrip(b"\r\n")
    payload, star, crc = text.rpartition(b"*")
    if not star or len(crc) != 4:
        raise FrameError(f"not a frame: {line!r}")
    try:
        expected = int(crc, 16)
    except ValueError:
        raise FrameError(f"not a frame: {line!r}") from None
    if crc16(payload) != expected:
        raise FrameError(f"CRC mismatch (got {crc.decode()}, computed {crc16(payload):04x})")
    try:
        return payload.decode("ascii")
    except UnicodeDecodeError:
        raise FrameError(f"not ASCII: {line!r}") from None


def float_to_hex(value: float) -> str:
    """The IEEE-754 float32 bit pattern of `value` (rounded to float32 first), 8 hex digits."""
    return np.float32(value).reshape(1).astype(">f4").tobytes().hex()


def hex_to_float(text: str) -> np.float32:
    """The float32 whose bit pattern is the 8 hex digits `text`."""
    return vector_from_hex(text, 1)[0]


def vector_to_hex(values: np.ndarray) -> str:
    """float32 values as one run of 8-digit hex bit patterns, no separators."""
    return np.asarray(values, dtype=np.float32).astype(">f4").tobytes().hex()


def vector_from_hex(text: str, count: int) -> np.ndarray:
    """`count` float32 values from a run of 8-digit hex bit patterns (exact both ways)."""
    if len(text) != 8 * count:
        raise FrameError(f"expected {count} float32 values ({8 * count} hex digits), got {text!r}")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise FrameError(f"not hex: {text!r}") from None
    return np.frombuffer(raw, dtype=">f4").astype(np.float32)


# ---- the host's requests ----


def hello(board_id: int) -> str:
    return f"HELLO {board_id}"


def train(epochs: int, lr: float, samples: int, batch: int, features: int) -> str:
    return f"TRAIN {epochs} {float_to_hex(lr)} {samples} {batch} {features}"


def batch(seq: int, x: np.ndarray, y: np.ndarray) -> str:
    """One batch: each sample is its features' hex followed by its label digit."""
    rows = np.asarray(x, dtype=np.float32).astype(">f4")
    labels = ["1" if label else "0" for label in y]
    samples = " ".join(row.tobytes().hex() + label for row, label in zip(rows, labels, strict=True))
    return f"B {seq} {len(rows)} {samples}"


def set_weights(w: np.ndarray, b: float) -> str:
    w = np.asarray(w, dtype=np.float32)
    return f"SETW {len(w)} {vector_to_hex(np.append(w, np.float32(b)))}"


def predict(x: np.ndarray) -> str:
    return f"PRED {vector_to_hex(x)}"


# ---- the board's replies ----


@dataclass(frozen=True)
class Reply:
    """A decoded reply: its first word and the words after it.

    >>> parse_reply("ACK 7")
    Reply(kind='ACK', fields=('7',))
    """

    kind: str
    fields: tuple[str, ...]

    def int(self, index: int) -> int:
        try:
            return int(self.fields[index])
        except (IndexError, ValueError):
            raise FrameError(f"reply {self} has no number at position {index}") from None


def parse_reply(payload: str) -> Reply:
    words = payload.split(" ")
    return Reply(words[0], tuple(words[1:]))


def parse_weights(reply: Reply) -> tuple[np.ndarray, np.float32]:
    """`W <F> <hex of w0..wF-1 then b>` -> (w, b)."""
    features = reply.int(0)
    if len(reply.fields) != 2:
        raise FrameError(f"malformed weights reply {reply}")
    values = vector_from_hex(reply.fields[1], features + 1)
    return values[:features].copy(), values[features]
