"""A chain of compressors with error feedback: the one object a strategy or an executor
holds to compress what it sends and to read what it receives.

A chain is one compressor, optionally followed by casts (fp16, bf16) that store its float
parts in half precision. With error feedback (Stich et al. 2018; Karimireddy et al. 2019)
each sender keeps the part of its updates compression dropped, e = (u + e) - decode(encode(
u + e)), and adds it to its next update; the memory is per sender, so a process that
compresses for many clients keeps one row per client, and it is saved in checkpoints.
"""

from __future__ import annotations

import numpy as np
import torch

from distlab.config_sections import CASTS, CompressConfig
from distlab.transforms import compressor_class
from distlab.transforms.base import Part, pack, unpack

# Keeps the chain's random stream apart from the run's other generators under one seed.
COMPRESS_STREAM = 7919


class Chain:
    """Encode (n, P) updates into (n, bytes) payloads and decode them; see the module doc."""

    def __init__(
        self, cfg: CompressConfig, shapes: list[tuple[int, ...]], seed: int, stream: int = 0
    ) -> None:
        names = cfg.names
        if not names:
            raise ValueError("compress.kind is none: there is nothing to chain")
        self.cfg = cfg
        self.head = compressor_class(names[0])(cfg, shapes)
        self.cast = torch.float32
        for name in names[1:]:
            self.cast = compressor_class(name).dtype
        self.numel = self.head.numel
        self.layout = [self._cast(p) for p in self.head.parts()]
        entropy = np.random.SeedSequence([seed, COMPRESS_STREAM, stream]).generate_state(2)
        self.gen = torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))
        self.memory: torch.Tensor | None = None  # (senders, P) error feedback

    def _cast(self, part: Part) -> Part:
        if part.dtype != torch.float32 or self.cast == torch.float32:
            return part
        return Part(part.name, self.cast, part.count)

    @property
    def names(self) -> list[str]:
        return self.cfg.names

    @property
    def payload_bytes(self) -> int:
        """Bytes one row's payload takes on the wire (measured side, per update)."""
        return sum(p.nbytes for p in self.layout)

    @property
    def dense_bytes(self) -> int:
        """Bytes of one uncompressed float32 update."""
        return 4 * self.numel

    def formula_bytes(self) -> float:
        """The papers' size of one update: the compressor's, halved per cast of its floats."""
        head = self.head.formula_bytes()
        if self.cast == torch.float32 or self.head.name in CASTS:
            return head
        floats = sum(p.nbytes for p in self.head.parts() if p.dtype == torch.float32)
        return head - floats / 2

    def roundtrip(self, rows: torch.Tensor, senders: np.ndarray) -> torch.Tensor:
        """What the receiver of these rows decodes, without packing bytes: for executors in
        one process, where the update does not travel (its bytes are `payload_bytes`)."""
        decoded = self._decode_parts(self._encode_parts(rows.cpu(), senders))
        return decoded.to(rows.device)

    def encode(self, rows: torch.Tensor, senders: np.ndarray) -> torch.Tensor:
        """(n, P) float32 updates of `senders` -> (n, payload_bytes) uint8 payloads."""
        # compressed on the CPU, where the bytes leave from; the payload on the rows' device
        return pack(self._encode_parts(rows.cpu(), senders), self.layout).to(rows.device)

    def decode(self, payload: torch.Tensor) -> torch.Tensor:
        """(n, payload_bytes) uint8 -> (n, P) float32 updates as the receiver sees them."""
        rows = payload.cpu().reshape(-1, self.payload_bytes)
        return self._decode_parts(unpack(rows, self.layout))

    def aggregate(self, mean: torch.Tensor) -> torch.Tensor:
        """The step on the mean of decoded updates (signSGD's majority vote takes its sign)."""
        return self.head.aggregate(mean)

    def _encode_parts(self, rows: torch.Tensor, senders: np.ndarray) -> dict[str, torch.Tensor]:
        rows = rows.detach().reshape(-1, self.numel).float()
        senders = np.asarray(senders, dtype=np.int64).reshape(-1)
        if self.cfg.error_feedback:
            # numpy: an update's few passes cost less in its calls than in torch's
            rows = torch.from_numpy(rows.numpy() + self._memory_of(senders).numpy())
        parts = self.head.encode(rows, senders, self.gen)
        parts = {n: (v.to(self.cast) if v.dtype == torch.float32 else v) for n, v in parts.items()}
        if self.cfg.error_feedback:
            # what the receiver will read, less: the sent parts after their cast
            residual = self.head.residual(rows, self._floats(parts))
            self.memory.numpy()[senders] = residual.numpy()
        return parts

    def _decode_parts(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head.decode(self._floats(parts))

    def _floats(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: (v.float() if v.dtype == self.cast else v) for n, v in parts.items()}

    def _memory_of(self, senders: np.ndarray) -> torch.Tensor:
        need = int(senders.max()) + 1 if len(senders) else 0
        if self.memory is None or len(self.memory) < need:
            grown = torch.zeros(need, self.numel)
            if self.memory is not None:
                grown[: len(self.memory)] = self.memory
            self.memory = grown
        return torch.from_numpy(self.memory.numpy()[senders])

    def state_dict(self) -> dict[str, object]:
        """Error-feedback memory, the compressor's own state and the random stream."""
        return {
            "memory": self.memory,
            "head": self.head.state_dict(),
            "gen": self.gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.memory = state["memory"]
        self.head.load_state_dict(state["head"])
        self.gen.set_state(state["gen"])


def make_chain(
    cfg: CompressConfig, shapes: list[tuple[int, ...]], seed: int, stream: int = 0
) -> Chain | None:
    """The run's chain, or None when compress.kind is none (nothing changes)."""
    return Chain(cfg, shapes, seed, stream) if cfg.names else None


def describe(chain: Chain) -> dict[str, object]:
    """The chain's sizes for one update, as the `compress` event records them: the summary's
    compression ratio is dense_bytes / payload_bytes."""
    return {
        "compressors": chain.names,
        "error_feedback": chain.cfg.error_feedback,
        "payload_bytes": chain.payload_bytes,
        "formula_bytes": round(chain.formula_bytes(), 1),
        "dense_bytes": chain.dense_bytes,
    }
