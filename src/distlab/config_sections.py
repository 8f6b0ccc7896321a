"""The sections of a RunConfig besides the strategy and the data: fault injection,
checkpoints, edge boards, the network, update compression and the simulated system.

Imports pydantic only, like config.py: the CLI reads these without loading torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Frozen(BaseModel):
    """Base for every config model: immutable, unknown keys rejected, docstrings kept."""

    # allow_inf_nan=False: `--lr inf` or `--lr 1e400` (which parses as inf) would train on
    # NaN; they are refused like any other bad number.
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
        coerce_numbers_to_str=True,
        allow_inf_nan=False,
    )


class FaultConfig(Frozen):
    """Inject a failure into one rank, to see how a run ends when a process misbehaves."""

    rank: int = Field(1, ge=0)
    """The rank that fails."""
    step: int = Field(1, ge=1)
    """The failure happens after this many steps of that rank."""
    kind: Literal["raise", "exit", "hang"] = "raise"
    """raise an exception, exit the process at once, or hang (block forever)."""

    def describe(self) -> str:
        """How a failure message names the fault: `fault.kind=exit at step 20`."""
        return f"fault.kind={self.kind} at step {self.step}"


class CheckpointConfig(Frozen):
    """Checkpoints a run can be resumed from (distlab run --resume RUN_DIR; torchrun
    --max-restarts restarts resume by themselves)."""

    every: int = Field(0, ge=0)
    """Write a checkpoint every this many steps, or rounds for round-based strategies
    (federated, gossip); 0 = never."""


class EdgeConfig(Frozen):
    """Microcontroller boards as federated clients (strategy.executor=serial): board i
    hosts client i, so strategy.clients equals the number of boards."""

    boards: int = Field(0, ge=0)
    """Simulated boards to start: the firmware on simavr behind a pty each (0 = use ports)."""
    ports: list[str] = []
    """Serial ports of real boards, e.g. [/dev/ttyACM0, /dev/ttyACM1]."""
    baud: int = 115200
    """Serial line speed; the protocol allows 9600, 19200, 38400, 57600 and 115200."""
    timeout: float = Field(10.0, gt=0)
    """Seconds a board may stay silent before it is named as lost."""


class NetworkConfig(Frozen):
    """How this host's processes reach the other hosts of a run."""

    interface: str | None = None
    """Interface to bind here, e.g. eth0: sets GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME."""


# The compressors of transforms/, by name (listed here so that a config is checked without
# loading torch; tests/unit/test_transforms.py keeps the two lists equal).
COMPRESSORS = ("none", "fp16", "bf16", "topk", "randk", "qsgd", "sign", "majority", "powersgd")
# Compressors that only change how each value is stored: they may follow another in a chain.
CASTS = ("fp16", "bf16")


class CompressConfig(Frozen):
    """Compression of every update a worker or client sends (transforms/): one name, or a
    chain such as [topk, fp16] (a sparsifier or quantizer, then a cast of its values)."""

    kind: str | list[str] = "none"
    """none, fp16, bf16, topk, randk, qsgd, sign (scaled sign), majority (signSGD with
    majority vote) or powersgd; a list is a chain."""
    ratio: float = Field(0.01, gt=0, le=1)
    """top-k and random-k: the fraction of coordinates sent, in (0, 1]."""
    error_feedback: bool = False
    """Keep what compression dropped and add it to the next update (Stich et al. 2018)."""
    levels: int = Field(127, ge=1)
    """QSGD: quantization levels s (127 is 8 bits with the sign, 1 is 2 bits)."""
    bucket: int = Field(512, ge=1)
    """QSGD: consecutive values that share one norm (the paper's experiments use 512); a
    smaller bucket lowers the variance of coarse levels for a float32 per bucket."""
    rank: int = Field(2, ge=1)
    """PowerSGD: rank r of the low-rank approximation."""
    downlink: bool = False
    """Compress what the server sends back too (param-server, fedavg)."""

    @field_validator("kind")
    @classmethod
    def _known(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else list(value)
        for name in names:
            if name not in COMPRESSORS:
                allowed = ", ".join(COMPRESSORS)
                raise ValueError(f"unknown compressor {name!r} (allowed: {allowed})")
        if len(names) > 1 and ("none" in names or any(n not in CASTS for n in names[1:])):
            raise ValueError(
                f"compress.kind chain {names} must be one compressor followed by casts "
                f"({', '.join(CASTS)}), e.g. [topk, fp16]"
            )
        if not names:
            raise ValueError("compress.kind must name at least one compressor (or none)")
        return value

    @property
    def names(self) -> list[str]:
        """The chain's compressors in order; [] when off."""
        names = [self.kind] if isinstance(self.kind, str) else list(self.kind)
        return [] if names == ["none"] else names


class SystemConfig(Frozen):
    """Clients (or workers) of unequal speed on a simulated clock: each round and step gets a
    simulated duration, the compute at that client's speed plus its bytes over its link."""

    speed: Literal["equal", "lognormal", "uniform"] = "equal"
    """How each client's compute speed is drawn (1 = the reference): equal, lognormal
    (median 1, spread sigma) or uniform in [low, high]."""
    sigma: float = Field(1.0, ge=0)
    """lognormal: the spread of log speed (and of log bandwidth)."""
    low: float = Field(0.5, gt=0)
    """uniform: the slowest speed."""
    high: float = Field(2.0, gt=0)
    """uniform: the fastest speed."""
    sample_seconds: float = Field(0.001, gt=0)
    """Simulated compute seconds per training sample at speed 1."""
    bandwidth: float = Field(100e6, gt=0)
    """Each client's link in bits per second (the median when links vary)."""
    vary_links: bool = False
    """Draw each client's bandwidth like its speed (lognormal or uniform around bandwidth)."""
    trace: Path | None = None
    """CSV with columns client, speed, bandwidth[, windows]: windows are the simulated
    seconds a client is available, e.g. 0-600;1200-1800 (empty = always)."""
    availability: float = Field(1.0, gt=0, le=1)
    """Probability that a client is available in a round (seeded), in (0, 1]."""
    deadline: float | None = Field(None, gt=0)
    """Simulated seconds a synchronous round waits for its clients (None = all of them)."""
    stragglers: Literal["drop", "partial"] = "drop"
    """A client past the deadline: drop its update (Bonawitz et al. 2019), or keep the local
    steps it finished in time (FedProx partial work, Li et al. 2020)."""

    @model_validator(mode="after")
    def _range(self) -> SystemConfig:
        if self.low > self.high:
            raise ValueError(f"system.low ({self.low}) must be <= system.high ({self.high})")
        return self
