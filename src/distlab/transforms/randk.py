"""Random-k sparsification: each row sends k = ceil(ratio * P) coordinates drawn uniformly
without replacement, unscaled, and their indices (Stich et al. 2018, "Sparsified SGD with
Memory": with compress.error_feedback the coordinates not drawn are kept for the next update).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from distlab.transforms.base import Compressor, Part


class RandK(Compressor):
    """k uniformly drawn coordinates of each row: k float32 values and k int32 indices."""

    name = "randk"
    stochastic = True

    @property
    def k(self) -> int:
        return max(1, math.ceil(self.cfg.ratio * self.numel))

    def parts(self) -> list[Part]:
        return [Part("values", torch.float32, self.k), Part("indices", torch.int32, self.k)]

    def encode(
        self, rows: torch.Tensor, senders: np.ndarray, gen: torch.Generator
    ) -> dict[str, torch.Tensor]:
        # The k largest of n x P uniform keys are a uniform k-subset of each row, drawn for
        # all rows in one call.
        keys = torch.rand(rows.shape, generator=gen)
        index = torch.topk(keys, self.k, dim=1, sorted=False).indices
        return {"values": rows.gather(1, index), "indices": index.to(torch.int32)}

    def decode(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        values = parts["values"].float()
        out = values.new_zeros(values.shape[0], self.numel)
        return out.scatter_(1, parts["indices"].long(), values)

    def formula_bytes(self) -> float:
        """k values and k indices of 32 bits each."""
        return 8.0 * self.k
