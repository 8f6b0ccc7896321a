"""Top-k sparsification: each row sends its k = ceil(ratio * P) largest-magnitude values and
their indices (Stich et al. 2018, "Sparsified SGD with Memory"; with compress.error_feedback
the dropped rest is added to the next update, the memory that makes it converge).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from distlab.transforms.base import Compressor, Part, index_bits, packed_count


class TopK(Compressor):
    """The k largest |values| of each row: k float32 values and k packed indices."""

    name = "topk"

    @property
    def k(self) -> int:
        return max(1, math.ceil(self.cfg.ratio * self.numel))

    def parts(self) -> list[Part]:
        return [
            Part("values", torch.float32, self.k),
            Part("indices", torch.int32, self.k, index_bits(self.numel)),
        ]

    def encode(self, rows: torch.Tensor, senders: np.ndarray, gen) -> dict[str, torch.Tensor]:
        index = torch.topk(rows.abs(), self.k, dim=1, sorted=False).indices
        return {"values": rows.gather(1, index), "indices": index.to(torch.int32)}

    def decode(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        values = parts["values"].float()
        out = values.new_zeros(values.shape[0], self.numel)
        return out.scatter_(1, parts["indices"].long(), values)

    def residual(self, rows: torch.Tensor, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """rows, less the sent value at each sent coordinate (0 there unless a cast rounded it)."""
        out = rows.numpy().copy()
        at = np.arange(len(out))[:, None], parts["indices"].numpy()
        out[at] -= parts["values"].float().numpy()
        return torch.from_numpy(out)

    def formula_bytes(self) -> float:
        """k values of 32 bits and k indices of ceil(log2 P) bits each, in whole bytes."""
        return 4.0 * self.k + packed_count(self.k, index_bits(self.numel))
