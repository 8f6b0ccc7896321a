"""One bit per value: the sign of each coordinate.

`ScaledSign` is EF-SignSGD's compressor (Karimireddy et al. 2019, "Error Feedback Fixes
SignSGD and other Gradient Compression Schemes"): (||g||_1 / P) sign(g), sign bits and one
float32 scale per row; with compress.error_feedback it converges where plain signSGD does
not. `MajorityVote` is signSGD with majority vote (Bernstein et al. 2018, "signSGD:
Compressed Optimisation for Non-Convex Problems"): each worker sends its signs only, and
the step is the sign of their sum, the vote.
"""

from __future__ import annotations

import numpy as np
import torch

from distlab.transforms.base import Compressor, Part, pack_bits, packed_count, unpack_codes


def sign_bits(rows: torch.Tensor) -> torch.Tensor:
    """(n, P) -> packed bits, 1 for a negative value (zero counts as positive)."""
    return pack_bits(rows.detach().numpy() < 0, 1)


def signs(packed: torch.Tensor, numel: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Packed sign bits -> (n, P) float32 of +scale and -scale (+1 and -1 without one)."""
    negative = unpack_codes(packed, 1, numel)
    scale = np.float32(1.0) if scale is None else scale.float().numpy()
    # scale - 2 scale b: exactly +-scale, in two numpy passes over the row
    out = negative.astype(np.float32)
    out *= -2 * scale
    out += scale
    return torch.from_numpy(out)


class ScaledSign(Compressor):
    """(||g||_1 / P) sign(g): a float32 scale and P sign bits per row."""

    name = "sign"

    def parts(self) -> list[Part]:
        return [
            Part("scale", torch.float32, 1),
            Part("bits", torch.uint8, packed_count(self.numel, 1)),
        ]

    def encode(self, rows: torch.Tensor, senders: np.ndarray, gen) -> dict[str, torch.Tensor]:
        scale = np.abs(rows.detach().numpy()).mean(axis=1, keepdims=True)
        return {"scale": torch.from_numpy(scale), "bits": sign_bits(rows)}

    def decode(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return signs(parts["bits"], self.numel, parts["scale"])

    def formula_bytes(self) -> float:
        """One bit per value and a 32-bit scale."""
        return 4.0 + self.numel / 8


class MajorityVote(Compressor):
    """sign(g) alone, P bits per row; the aggregate of the decoded rows is their vote."""

    name = "majority"

    def parts(self) -> list[Part]:
        return [Part("bits", torch.uint8, packed_count(self.numel, 1))]

    def encode(self, rows: torch.Tensor, senders: np.ndarray, gen) -> dict[str, torch.Tensor]:
        return {"bits": sign_bits(rows)}

    def decode(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return signs(parts["bits"], self.numel)

    def aggregate(self, mean: torch.Tensor) -> torch.Tensor:
        """The majority vote: the sign of the mean of the senders' signs (0 on a tie)."""
        return torch.sign(mean)

    def formula_bytes(self) -> float:
        """One bit per value."""
        return self.numel / 8
