"""The edge boards' line protocol: CRC-16, framing, float32 hex, the messages."""

from __future__ import annotations

import numpy as np
import pytest

from distlab.edge import protocol
from distlab.edge.protocol import FrameError


def test_crc16_is_ccitt_false():
    # The catalogue's check value for CRC-16/CCITT-FALSE, and the empty input.
    assert protocol.crc16(b"123456789") == 0x29B1
    assert protocol.crc16(b"") == 0xFFFF


def test_frame_round_trip():
    frame = protocol.encode_frame("ACK 12")

    assert frame == b"ACK 12*%04x\n" % protocol.crc16(b"ACK 12")
    assert protocol.decode_frame(frame) == "ACK 12"
    assert protocol.decode_frame(frame.replace(b"\n", b"\r\n")) == "ACK 12"


@pytest.mark.parametrize(
    "line",
    [
        b"ACK 13*" + b"%04x" % protocol.crc16(b"ACK 12") + b"\n",  # payload changed in transit
        protocol.encode_frame("ACK 12")[:-2] + b"0\n",  # checksum changed
        b"ACK 12\n",  # no checksum
        b"ACK 12*12\n",  # short checksum
        b"ACK 12*zzzz\n",  # not hex
        b"\xff*" + b"%04x" % protocol.crc16(b"\xff") + b"\n",  # not ASCII
    ],
)
def test_a_corrupted_line_is_rejected(line):
    with pytest.raises(FrameError):
        protocol.decode_frame(line)


def test_a_payload_cannot_hold_the_frame_characters():
    with pytest.raises(ValueError, match="cannot hold"):
        protocol.encode_frame("A*B")


def test_float32_hex_is_exact_both_ways():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 2000, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    values = values[np.isfinite(values)]

    back = protocol.vector_from_hex(protocol.vector_to_hex(values), len(values))

    assert np.array_equal(back.view(np.uint32), values.view(np.uint32))
    assert protocol.float_to_hex(1.0) == "3f800000"
    assert protocol.float_to_hex(-0.0) == "80000000"
    assert protocol.hex_to_float("40490fdb") == np.float32(np.pi)


def test_float_to_hex_rounds_to_float32_first():
    assert protocol.float_to_hex(0.1) == "3dcccccd"  # float32(0.1), round to nearest


def test_vector_from_hex_checks_its_length():
    with pytest.raises(FrameError, match="expected 2"):
        protocol.vector_from_hex("3f800000", 2)


def test_messages_on_the_wire():
    x = np.float32([[1.0, -2.0], [0.5, 0.0]])

    assert protocol.hello(3) == "HELLO 3"
    assert protocol.train(2, 0.5, 10, 4, 2) == "TRAIN 2 3f000000 10 4 2"
    assert protocol.batch(7, x, np.array([1, 0])) == ("B 7 2 3f800000c00000001 3f000000000000000")
    assert protocol.set_weights(np.float32([1.0]), -1.0) == "SETW 1 3f800000bf800000"
    assert protocol.predict(np.float32([2.0])) == "PRED 40000000"


def test_replies_parse():
    reply = protocol.parse_reply("W 2 3f800000c000000040400000")

    w, b = protocol.parse_weights(reply)

    assert w.tolist() == [1.0, -2.0] and b == np.float32(3.0)
    assert protocol.parse_reply("NAK 4 crc") == protocol.Reply("NAK", ("4", "crc"))
    with pytest.raises(FrameError):
        protocol.parse_reply("ACK x").int(0)
