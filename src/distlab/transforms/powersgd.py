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
        # numpy on the small matrices of one update: its calls cost a fraction of torch's
        values, at, n, out = rows.detach().numpy(), who.numpy(), rows.shape[0], {}
        matrices = [
            values[:, offset : offset + m * c].reshape(n, m, c) for offset, m, c, _ in self.matrices
        ]
        products = [matrix @ self.q[j].numpy()[at] for j, matrix in enumerate(matrices)]
        for j, (matrix, p) in enumerate(zip(matrices, orthonormal(products), strict=True)):
            q = matrix.transpose(0, 2, 1) @ p
            self.q[j].numpy()[at] = q
            out[f"p{j}"] = torch.from_numpy(p.reshape(n, -1))
            out[f"q{j}"] = torch.from_numpy(q.reshape(n, -1))
        out["raw"] = torch.from_numpy(values[:, self.vector_index.numpy()])
        return out

    def _warm_start(self, who: torch.Tensor, gen: torch.Generator) -> None:
        """Grow the per-sender Q to hold `who` and draw a fresh Q for first-time senders."""
        need = int(who.max()) + 1 if len(who) else 0
        if need <= len(self.seen) and self.seen.numpy()[who.numpy()].all():
            return  # every sender's Q is warm: the common case, a few calls
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
        out = np.empty((n, self.numel), dtype=np.float32)  # every coordinate is set below
        for j, (offset, m, c, rank) in enumerate(self.matrices):
            p = parts[f"p{j}"].float().numpy().reshape(n, m, rank)
            q = parts[f"q{j}"].float().numpy().reshape(n, c, rank)
            out[:, offset : offset + m * c] = (p @ q.transpose(0, 2, 1)).reshape(n, -1)
        out[:, self.vector_index.numpy()] = parts["raw"].float().numpy()
        return torch.from_numpy(out)

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


def orthonormal(products: list[np.ndarray]) -> list[np.ndarray]:
    """Each (n, m, r) -> the Q of its QR, orthonormal columns spanning the same space, all
    in one batched QR: each zero-padded to the largest m and r (a QR's first r columns
    depend on the first r columns alone, and zero rows stay zero), then cut back."""
    if not products:
        return []
    n = products[0].shape[0]
    rows = max(p.shape[1] for p in products)
    rank = max(p.shape[2] for p in products)
    padded = np.zeros((n, len(products), rows, rank), dtype=np.float32)
    for j, p in enumerate(products):
        padded[:, j, : p.shape[1], : p.shape[2]] = p
    q = np.linalg.qr(padded)[0]
    return [q[:, j, : p.shape[1], : p.shape[2]] for j, p in enumerate(products)]
