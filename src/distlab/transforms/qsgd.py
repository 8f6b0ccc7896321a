"""QSGD: stochastic quantization of each row to s levels of its L2 norm (Alistarh et al.
2017, "QSGD: Communication-Efficient SGD via Gradient Quantization and Encoding").

A coordinate v of a row with norm ||u|| is sent as its sign and a level l in 0..s, with
l = floor(s |v| / ||u||) rounded up with probability equal to the remainder, so that
||u|| sign(v) l / s is an unbiased estimate of v. The sign and the level share one packed
field of 1 + ceil(log2(s + 1)) bits (levels=127: 8 bits, levels=1: 2 bits), plus one
float32 norm per bucket of compress.bucket consecutive values (512 in the paper's
experiments: the variance of the estimate grows with the square root of what one norm
covers, which makes 2 bits over a whole model diverge).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from distlab.transforms.base import (
    Compressor,
    Part,
    _width,
    pack_bits,
    packed_count,
    unpack_codes,
)


class Qsgd(Compressor):
    """QSGD with s = compress.levels: a float32 norm and packed sign + level per value."""

    name = "qsgd"
    stochastic = True

    @property
    def levels(self) -> int:
        return self.cfg.levels

    @property
    def bits(self) -> int:
        """Bits of one value: the level's ceil(log2(s + 1)) and the sign's one."""
        return math.ceil(math.log2(self.levels + 1)) + 1

    @property
    def buckets(self) -> int:
        return -(-self.numel // self.cfg.bucket)

    def parts(self) -> list[Part]:
        return [
            Part("norm", torch.float32, self.buckets),
            Part("bits", torch.uint8, packed_count(self.numel, self.bits)),
        ]

    def encode(
        self, rows: torch.Tensor, senders: np.ndarray, gen: torch.Generator
    ) -> dict[str, torch.Tensor]:
        # numpy on the (n, P) rows: one update is small, and numpy's calls cost little
        values = rows.detach().numpy()
        norm = self._bucket_norms(values)
        inverse = (self.levels / np.where(norm > 0, norm, 1)).astype(np.float32)
        scaled = np.abs(values) * self._spread(inverse)
        # floor(x + u), u uniform in [0, 1): x rounded up with probability frac(x), unbiased
        scaled += uniform(values.shape, gen)
        np.minimum(scaled, self.levels, out=scaled)
        # sign and level in one code: truncation is the floor of a value >= 0
        code = scaled.astype(self._code_type)
        negative = np.less(values, 0).view(np.uint8).astype(self._code_type, copy=False)
        code |= negative << self._code_type(self.bits - 1)
        return {"norm": torch.from_numpy(norm), "bits": pack_bits(code, self.bits)}

    def decode(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        packed = parts["bits"].numpy()
        scale = self._spread(parts["norm"].float().numpy() / self.levels)
        if 8 % self.bits == 0:
            # A table of the signed levels of every byte's codes: one look-up per byte
            n = packed.shape[0]
            signed = np.take(self._byte_table, packed, axis=0).reshape(n, -1)[:, : self.numel]
            return torch.from_numpy(signed * scale)
        code = unpack_codes(packed, self.bits, self.numel)
        out = (code & (self._sign_bit - 1)).astype(np.float32)
        out[code >= self._sign_bit] *= -1
        return torch.from_numpy(out * scale)

    def _bucket_norms(self, values: np.ndarray) -> np.ndarray:
        """(n, buckets) float32 L2 norms of each bucket of consecutive values."""
        n, size = values.shape[0], self.cfg.bucket
        padded = np.zeros((n, self.buckets * size), dtype=np.float32)
        padded[:, : self.numel] = values
        grouped = padded.reshape(n, self.buckets, size)
        return np.sqrt(np.einsum("ijk,ijk->ij", grouped, grouped)).astype(np.float32)

    def _spread(self, per_bucket: np.ndarray) -> np.ndarray:
        """(n, buckets) -> (n, P): each bucket's figure on each of its values."""
        if self.buckets == 1:
            return per_bucket[:, :1]
        return np.repeat(per_bucket, self.cfg.bucket, axis=1)[:, : self.numel]

    @property
    def _code_type(self) -> type:
        """The smallest unsigned numpy type holding one code."""
        return np.dtype(f"<u{_width(self.bits)}").type

    @functools.cached_property
    def _byte_table(self) -> np.ndarray:
        """(256, 8 / bits): the signed levels of the codes one byte holds, first code first;
        a code is l below the sign bit and -(code - sign bit) above it."""
        codes = unpack_codes(np.arange(256, dtype=np.uint8)[:, None], self.bits, 8 // self.bits)
        codes = codes.astype(np.int64)
        return np.where(codes >= self._sign_bit, self._sign_bit - codes, codes).astype(np.float32)

    @property
    def _sign_bit(self) -> int:
        """The field's top bit, set for a negative value."""
        return 1 << (self.bits - 1)

    def formula_bytes(self) -> float:
        """One 32-bit norm per bucket and (1 + ceil(log2(s + 1))) bits per value (the paper's
        plain, fixed-width encoding; its Elias coding of sparse levels is not modelled)."""
        return 4.0 * self.buckets + self.numel * self.bits / 8


def uniform(shape: tuple[int, ...], gen: torch.Generator) -> np.ndarray:
    """Uniform float32 in [0, 1) of `shape`, from a numpy SFC64 stream seeded by one draw of
    `gen`: seeded and resumable with the chain's generator, at half the cost of torch.rand."""
    seed = int(torch.randint(2**62, (1,), generator=gen))
    return np.random.Generator(np.random.SFC64(seed)).random(shape, dtype=np.float32)
