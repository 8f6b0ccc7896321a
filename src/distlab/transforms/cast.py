"""Half-precision casts: every value sent as fp16 or bf16, half the bytes of float32.

As DDP's fp16_compress_hook and bf16_compress_hook do (Micikevicius et al. 2018, "Mixed
Precision Training"). In a chain they store another compressor's float values.
"""

from __future__ import annotations

import numpy as np
import torch

from distlab.transforms.base import Compressor, Part


class Fp16(Compressor):
    """IEEE half precision (5 exponent bits): exact on small gradients, overflows past 65504."""

    name = "fp16"
    dtype = torch.float16

    def parts(self) -> list[Part]:
        return [Part("values", self.dtype, self.numel)]

    def encode(self, rows: torch.Tensor, senders: np.ndarray, gen) -> dict[str, torch.Tensor]:
        return {"values": rows.to(self.dtype)}

    def decode(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return parts["values"].float()

    def formula_bytes(self) -> float:
        return 2.0 * self.numel


class Bf16(Fp16):
    """bfloat16 (float32's exponent, 8 bits of mantissa): never overflows, coarser values."""

    name = "bf16"
    dtype = torch.bfloat16
