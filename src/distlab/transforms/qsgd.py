"""QSGD: stochastic quantization of each row to s levels of its L2 norm (Alistarh et al.
2017, "QSGD: Communication-Efficient SGD via Gradient Quantization and Encoding").

A coordinate v of a row with norm ||u|| is sent as its sign and a level l in 0..s, with
l = floor(s |v| / ||u||) rounded up with probability equal to the remainder, so that
||u|| sign(v) l / s is an unbiased estimate of v. The sign and the level share one packed
field of 1 + ceil(log2(s + 1)) bits (levels=127: 8 bits, levels=1: 2 bits), plus one
float32 norm per row.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from distlab.transforms.base import Compressor, Part, pack_bits, packed_count, unpack_bits


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

    def parts(self) -> list[Part]:
        return [
            Part("norm", torch.float32, 1),
            Part("bits", torch.uint8, packed_count(self.numel, self.bits)),
        ]

    def encode(
        self, rows: torch.Tensor, senders: np.ndarray, gen: torch.Generator
    ) -> dict[str, torch.Tensor]:
        norm = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
        scaled = rows.abs().mul_(self.levels / torch.where(norm > 0, norm, 1.0))
        # floor(x + u), u uniform in [0, 1): x rounded up with probability frac(x), unbiased
        level = scaled.add_(torch.rand(rows.shape, generator=gen)).floor_().clamp_(max=self.levels)
        field = level.add_((rows < 0) * float(self._sign_bit))
        return {"norm": norm, "bits": pack_bits(field.to(torch.int64), self.bits)}

    def decode(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        field = unpack_bits(parts["bits"], self.bits, self.numel).float()
        signed = torch.where(field >= self._sign_bit, self._sign_bit - field, field)
        return signed.mul_(parts["norm"].float() / self.levels)

    @property
    def _sign_bit(self) -> int:
        """The field's top bit, set for a negative value."""
        return 1 << (self.bits - 1)

    def formula_bytes(self) -> float:
        """One 32-bit norm and (1 + ceil(log2(s + 1))) bits per value (the paper's plain,
        fixed-width encoding; its Elias coding of sparse levels is not modelled)."""
        return 4.0 + self.numel * self.bits / 8
