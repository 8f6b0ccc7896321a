"""The compressor contract: what one transform of the update seam does to a batch of updates.

An update is a flat float32 vector of P values (a gradient, a model delta). A compressor
works on a batch of them, (n, P) rows, one per sender, so an executor that trains many
clients at once compresses them all in one call. `encode` turns the rows into named parts
(values, indices, packed bits, a scale), each a (n, count) tensor whose count is fixed by P
alone, so every sender's payload has the same size and a receiver unpacks it from its
`parts()`. `decode` turns the parts back into (n, P) rows: what the receiver sees.

`formula_bytes` is the paper's count of one row's payload: the analytic side of the
summary, next to the bytes the Communicator measured. `aggregate` is the server's (or every
worker's) step on the mean of the decoded rows: the identity, except for signSGD's majority
vote. A compressor that keeps state per sender (PowerSGD's warm start) keys it by the
`senders` it is given and saves it in `state_dict`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from distlab.config_sections import CompressConfig


@dataclass(frozen=True)
class Part:
    """One named piece of a row's payload: its dtype and how many of them a row holds.
    An integer part with `bits` travels packed at that many bits a value (indices into P
    values need ceil(log2 P) bits, not 32); encode and decode still see `dtype`."""

    name: str
    dtype: torch.dtype
    count: int
    bits: int | None = None

    @property
    def nbytes(self) -> int:
        if self.bits is not None:
            return packed_count(self.count, self.bits)
        return self.count * self.dtype.itemsize


class Compressor(ABC):
    """One compressor; subclasses set `name` and implement parts, encode, decode."""

    name = "none"
    stochastic = False
    """Whether encode draws random numbers (from the generator it is given)."""

    def __init__(self, cfg: CompressConfig, shapes: list[tuple[int, ...]]) -> None:
        self.cfg = cfg
        self.shapes = [tuple(s) for s in shapes]
        self.numel = sum(math.prod(s) for s in self.shapes)

    @abstractmethod
    def parts(self) -> list[Part]:
        """The payload of one row, in order."""

    @abstractmethod
    def encode(
        self, rows: torch.Tensor, senders: np.ndarray, gen: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """(n, P) float32 rows -> each part as an (n, count) tensor of its dtype."""

    @abstractmethod
    def decode(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """The parts of n rows -> (n, P) float32 rows, what the receiver sees."""

    def residual(self, rows: torch.Tensor, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """What error feedback keeps of `rows` after sending `parts` (float32 parts, as the
        receiver reads them): rows - decode(parts); a sparsifier computes it without the
        dense decode."""
        return rows - self.decode(parts)

    def formula_bytes(self) -> float:
        """The paper's size of one row's payload in bytes (default: the parts' own)."""
        return float(sum(p.nbytes for p in self.parts()))

    def aggregate(self, mean: torch.Tensor) -> torch.Tensor:
        """The step on the mean of the decoded rows (the identity for most)."""
        return mean

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        return None


def pack(parts: dict[str, torch.Tensor], layout: list[Part]) -> torch.Tensor:
    """The parts of n rows as one (n, bytes) uint8 tensor, part after part: what travels."""
    n = next(iter(parts.values())).shape[0] if parts else 0
    pieces = []
    for part in layout:
        value = parts[part.name]
        if part.nbytes == 0:  # a part with nothing in it (a model without biases)
            continue
        if part.bits is not None:
            pieces.append(pack_bits(value.numpy(), part.bits).numpy())
            continue
        if value.dtype != part.dtype:
            value = value.to(part.dtype)
        value = value.reshape(n, -1)
        if value.stride(-1) != 1 or not value.is_contiguous():  # an expanded part is copied
            value = torch.empty_like(value, memory_format=torch.contiguous_format).copy_(value)
        # bytes through numpy: a few cheap calls per part (bfloat16 has no numpy type, bytes do)
        pieces.append(value.view(torch.uint8).numpy().reshape(n, part.nbytes))
    return torch.from_numpy(np.concatenate(pieces, axis=1))


def unpack(payload: torch.Tensor, layout: list[Part]) -> dict[str, torch.Tensor]:
    """The inverse of `pack`: (n, bytes) uint8 -> each part as (n, count) of its dtype."""
    array, out, at = payload.numpy(), {}, 0
    for part in layout:
        # A fresh (n, bytes) copy: a slice of one row counts as contiguous but keeps the
        # payload's row stride and offset, which a view as a wider dtype refuses.
        chunk = array[:, at : at + part.nbytes].copy()
        if part.nbytes == 0:
            out[part.name] = torch.zeros(len(array), part.count, dtype=part.dtype)
        elif part.bits is not None:
            codes = unpack_codes(chunk, part.bits, part.count)
            out[part.name] = torch.from_numpy(codes.astype(np.int64)).to(part.dtype)
        else:
            out[part.name] = torch.from_numpy(chunk).view(part.dtype)
        at += part.nbytes
    return out


def pack_bits(values: torch.Tensor | np.ndarray, bits: int) -> torch.Tensor:
    """(n, m) integers in [0, 2**bits) -> (n, ceil(m * bits / 8)) uint8, bit planes packed
    little-endian per value (numpy's packbits on the rows)."""
    width = _width(bits)
    codes = np.asarray(values).astype(f"<u{width}", copy=False)
    n, m = codes.shape
    if bits == 1:
        return torch.from_numpy(np.packbits(codes, axis=1, bitorder="little"))
    if bits == 8 * width:
        return torch.from_numpy(np.ascontiguousarray(codes).view(np.uint8).reshape(n, -1))
    if bits in (2, 4):
        # Whole values per byte, or'ed in by shifts on uint8: numpy, as its calls cost
        # little on the small rows of one update.
        per = 8 // bits
        grouped = np.zeros((n, -(-m // per) * per), dtype=np.uint8)
        grouped[:, :m] = codes
        grouped = grouped.reshape(n, -1, per)
        out = grouped[:, :, 0].copy()
        for j in range(1, per):
            out |= grouped[:, :, j] << np.uint8(bits * j)
        return torch.from_numpy(out)
    # Each value's little-endian bytes, unpacked to bits, cut to `bits`, packed again: a
    # few numpy passes over uint8 instead of one int64 per bit.
    raw = np.ascontiguousarray(codes).view(np.uint8).reshape(n, m, width)
    planes = np.unpackbits(raw, axis=2, bitorder="little")[:, :, :bits]
    return torch.from_numpy(np.packbits(planes.reshape(n, m * bits), axis=1, bitorder="little"))


def unpack_bits(packed: torch.Tensor, bits: int, m: int) -> torch.Tensor:
    """The inverse of `pack_bits`: (n, bytes) uint8 -> (n, m) int64."""
    return torch.from_numpy(unpack_codes(packed, bits, m).astype(np.int64))


def unpack_codes(packed: torch.Tensor, bits: int, m: int) -> np.ndarray:
    """The inverse of `pack_bits` in the smallest unsigned type of `bits` (uint8 up to 8):
    (n, bytes) uint8 -> (n, m), a numpy view where it can be one."""
    array = np.asarray(packed)
    n, width = array.shape[0], _width(bits)
    if bits == 1:
        return np.unpackbits(array, axis=1, count=m, bitorder="little")
    if bits in (2, 4):
        shifts = np.arange(0, 8, bits, dtype=np.uint8)
        values = (array[:, :, None] >> shifts) & np.uint8(2**bits - 1)
        return values.reshape(n, -1)[:, :m]
    if bits == 8 * width:
        raw = np.ascontiguousarray(array[:, : m * width])
    else:
        flat = np.unpackbits(array, axis=1, count=m * bits, bitorder="little")
        planes = np.zeros((n, m, 8 * width), dtype=np.uint8)
        planes[:, :, :bits] = flat.reshape(n, m, bits)
        raw = np.packbits(planes, axis=2, bitorder="little")
    return raw.reshape(n, m * width).view(f"<u{width}").reshape(n, m)


def _width(bits: int) -> int:
    """Bytes of the smallest unsigned integer type holding `bits` bits."""
    if not 1 <= bits <= 63:
        raise ValueError(f"pack_bits packs 1 to 63 bits a value, not {bits}")
    return next(w for w in (1, 2, 4, 8) if bits <= 8 * w)


def index_bits(numel: int) -> int:
    """Bits that hold any index into `numel` values."""
    return max(1, (numel - 1).bit_length())


def packed_count(m: int, bits: int) -> int:
    """Bytes of m values of `bits` bits packed."""
    return -(-m * bits // 8)
