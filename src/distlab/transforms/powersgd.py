"""PowerSGD: a rank-r approximation of each weight matrix's update by one power iteration
with a warm start (Vogels et al. 2019, "PowerSGD: Practical Low-Rank Gradient Compression
for Distributed Optimization").

Each parameter of two or more dimensions is read as a matrix M (shape[0] rows); with the
sender's Q from its previous update (fresh Gaussian the first time), P = orthogonalize(M Q)
and Q = M^T P, and the receiver decodes P Q^T. P and Q travel as float32; parameters of one
dimension (biases) travel raw, as in the paper. Q is kept per sender, the warm start that
makes one iteration a step of subspace iteration across updates; it is saved in checkpoints.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from distlab.transforms.base import Compressor, Part


class PowerSgd(Compressor):
    """Rank-r factors P and Q of every matrix, the vectors raw; see the module doc."""

    name = "powersgd"
    stochastic = True

    def __init__(self, cfg, shapes: list[tuple[int, ...]]) -> None:
        super().__init__(cfg, shapes)
        self.matrices: list[tuple[int, int, int, int]] = []  # offset, rows, cols, rank
        self.vectors: list[tuple[int, int]] = []  # offset, numel
        offset = 0
        for shape in self.shapes:
            numel = math.prod(shape)
            if len(shape) >= 2:
                rows, cols = shape[0], numel // shape[0]
                self.matrices.append((offset, rows, cols, min(cfg.rank, rows, cols)))
            else:
                self.vectors.append((offset, numel))
            offset += numel
        self.raw = sum(numel for _, numel in self.vectors)
        spans = [torch.arange(offset, offset + numel) for offset, numel in self.vectors]
        self.vector_index = torch.cat(spans) if spans else torch.zeros(0, dtype=torch.int64)
        self.q: list[torch.Tensor] = [torch.zeros(0, c, r) for _, _, c, r in self.matrices]
        self.seen = torch.zeros(0, dtype=torch.bool)

    def parts(self) -> list[Part]:
        parts = []
        for j, (_, rows, cols, rank) in enumerate(self.matrices):
            parts.append(Part(f"p{j}", torch.float32, rows * rank))
            parts.append(Part(f"q{j}", torch.float32, cols * rank))
        return parts + [Part("raw", torch.float32, self.raw)]

    def encode(
        self, rows: torch.Tensor, senders: np.ndarray, gen: torch.Generator
    ) -> dict[str, torch.Tensor]:
        who = torch.from_numpy(np.asarray(senders, dtype=np.int64))
        self._warm_start(who, gen)
        n, out = rows.shape[0], {}
        for j, (offset, m, c, _) in enumerate(self.matrices):
            matrix = rows[:, offset : offset + m * c].reshape(n, m, c)
            p = torch.linalg.qr(matrix @ self.q[j][who]).Q
            q = matrix.transpose(1, 2) @ p
            self.q[j][who] = q
            out[f"p{j}"], out[f"q{j}"] = p.reshape(n, -1), q.reshape(n, -1)
        out["raw"] = rows.index_select(1, self.vector_index)
        return out

    def _warm_start(self, who: torch.Tensor, gen: torch.Generator) -> None:
        """Grow the per-sender Q to hold `who` and draw a fresh Q for first-time senders."""
        need = int(who.max()) + 1 if len(who) else 0
        if need > len(self.seen):
            grow = need - len(self.seen)
            self.seen = torch.cat([self.seen, torch.zeros(grow, dtype=torch.bool)])
            self.q = [torch.cat([q, q.new_zeros(grow, *q.shape[1:])]) for q in self.q]
        fresh = torch.unique(who[~self.seen[who]])
        for j, (_, _, cols, rank) in enumerate(self.matrices):
            self.q[j][fresh] = torch.randn(len(fresh), cols, rank, generator=gen)
        self.seen[fresh] = True

    def decode(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        n = parts["raw"].shape[0]
        out = torch.empty(n, self.numel)  # every coordinate is in a matrix or a vector
        for j, (offset, m, c, rank) in enumerate(self.matrices):
            p = parts[f"p{j}"].float().reshape(n, m, rank)
            q = parts[f"q{j}"].float().reshape(n, c, rank)
            out[:, offset : offset + m * c] = (p @ q.transpose(1, 2)).reshape(n, -1)
        return out.index_copy_(1, self.vector_index, parts["raw"].float())

    def formula_bytes(self) -> float:
        """r (rows + cols) float32 values per matrix and every vector raw."""
        factors = sum(r * (m + c) for _, m, c, r in self.matrices)
        return 4.0 * (factors + self.raw)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"q{j}": q.clone() for j, q in enumerate(self.q)}
        state["seen"] = self.seen.clone()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.q = [state[f"q{j}"].clone() for j in range(len(self.matrices))]
        self.seen = state["seen"].clone()
