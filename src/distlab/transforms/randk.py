"""Random-k sparsification: each row sends k = ceil(ratio * P) coordinates drawn uniformly
without replacement, unscaled, and their indices (Stich et al. 2018, "Sparsified SGD with
Memory": with compress.error_feedback the coordinates not drawn are kept for the next update).
"""

from __future__ import annotations

import numpy as np
import torch

from distlab.transforms.topk import TopK


class RandK(TopK):
    """k uniformly drawn coordinates of each row: top-k's payload (k float32 values and k
    packed indices), decode and residual, with the coordinates drawn instead of chosen."""

    name = "randk"
    stochastic = True

    def encode(
        self, rows: torch.Tensor, senders: np.ndarray, gen: torch.Generator
    ) -> dict[str, torch.Tensor]:
        index = self._draw(rows.shape[0], gen)
        return {"values": rows.gather(1, index), "indices": index.to(torch.int32)}

    def _draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n, k) distinct coordinates per row, a uniform k-subset of 0..P-1."""
        k, p = self.k, self.numel
        if 4 * k <= p:
            # The first k distinct values of k + extra uniform draws are a uniform k-subset:
            # work on about k numbers a row instead of P. `extra` covers the duplicates
            # (k^2 / 2P expected); a row still short of k falls back to the keys below.
            draws = torch.randint(p, (n, k + 8 + 4 * -(-k * k // p)), generator=gen)
            ordered, where = torch.sort(draws, dim=1, stable=True)
            repeat = torch.zeros_like(ordered, dtype=torch.bool)
            repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
            if int((~repeat).sum(1).min()) >= k:
                first = where.masked_fill(repeat, draws.shape[1])  # a repeat's position last
                keep = torch.topk(first, k, dim=1, largest=False, sorted=False).indices
                return ordered.gather(1, keep)
        # The k largest of n x P uniform keys are a uniform k-subset of each row.
        keys = torch.rand(n, p, generator=gen)
        return torch.topk(keys, k, dim=1, sorted=False).indices
