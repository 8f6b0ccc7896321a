"""The parameters of fedavg and its family (strategies/fedavg.py), apart from the strategy
so that its module stays one paradigm's rules."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distlab.federated.server import CHUNK
from distlab.strategies.spec import StrategyBase


class Params(StrategyBase):
    """Federated learning with K virtual clients, a sample of which trains each round."""

    name: Literal["fedavg"] = "fedavg"
    clients: int = Field(10, ge=1)
    """Number of virtual clients K; the training set is partitioned among them."""
    clients_per_round: int | None = Field(None, ge=1)
    """Clients sampled each round (C * K in McMahan et al.); None = all clients."""
    rounds: int = Field(10, ge=1)
    """Communication rounds R."""
    local_epochs: int = Field(1, ge=1)
    """Local epochs E each sampled client makes over its own training data per round."""
    local_batch: int | Literal["full"] | None = None
    """Local batch B: a size, 'full' (the whole local set; with E=1 this is FedSGD), or
    None = the run's batch_size."""
    executor: Literal["auto", "processes", "vectorized", "sequential", "flower", "serial"] = "auto"
    """Where clients train: processes (server on rank 0, clients on ranks 1..workers),
    vectorized (one process, all sampled clients at once), sequential (one process, one
    client after another, as a host does), flower (SuperNodes of Flower's deployment
    engine: distlab deploy server or local), serial (edge boards over serial lines, see the
    edge.* keys), auto = processes when workers > 1 else vectorized."""
    algorithm: Literal[
        "fedavg", "fedsgd", "fedprox", "fedavgm", "fedadam", "fedadagrad", "fedyogi"
    ] = "fedavg"
    """fedavg, fedsgd (one full-batch local step), fedprox (proximal term mu), fedavgm
    (server momentum), fedadam, fedadagrad or fedyogi (adaptive server optimizers)."""
    aggregator: Literal[
        "mean", "median", "trimmed-mean", "krum", "bulyan", "centered-clip", "norm-bound"
    ] = "mean"
    """How client models are combined: sample-weighted mean, coordinate-wise median,
    coordinate-wise trimmed mean, Krum, Bulyan, centered clipping of the deltas around the
    last round's aggregate delta, or the weighted mean of norm-bounded deltas."""
    aggregate_chunk: int = Field(CHUNK, ge=1)
    """Clients a round trains and folds into the aggregate at a time: the mean streams, so a
    round's memory grows with this, not with clients_per_round (median, trimmed-mean, krum
    and bulyan keep every update of the round anyway; norm-bound streams, and centered-clip
    with clip_iters 1). A round of one chunk is exact; with more,
    the mean equals the one-shot mean up to float rounding. Under the processes executor a
    chunk's clients mostly sit on few hosts, so a chunk smaller than a round trains less in
    parallel."""
    mu: float = Field(0.0, ge=0)
    """FedProx proximal weight: clients minimize loss + mu/2 ||w - w_global||^2."""
    server_lr: float = Field(1.0, gt=0)
    """Server learning rate applied to the aggregate's step (1 = take the aggregate)."""
    server_momentum: float = Field(0.9, ge=0, lt=1)
    """FedAvgM server momentum beta in [0, 1)."""
    beta1: float = Field(0.9, ge=0, lt=1)
    """FedAdam, FedAdagrad, FedYogi first-moment decay."""
    beta2: float = Field(0.99, ge=0, lt=1)
    """FedAdam, FedYogi second-moment decay."""
    tau: float = Field(1e-3, gt=0)
    """FedAdam, FedAdagrad, FedYogi adaptivity (the epsilon of Reddi et al. 2021)."""
    trim_ratio: float = Field(0.1, ge=0, lt=0.5)
    """Trimmed mean: fraction of largest and of smallest values dropped per coordinate."""
    krum_f: int = Field(0, ge=0)
    """Krum and Bulyan: number of Byzantine clients tolerated; Krum needs more than 2f + 2
    updates, Bulyan at least 4f + 3."""
    norm_bound: float = Field(1.0, gt=0)
    """Norm bounding (Sun et al. 2019): each client's delta is scaled to norm <= M."""
    clip_radius: float = Field(1.0, gt=0)
    """Centered clipping (Karimireddy et al. 2021): the radius tau of each delta's clipping
    around the centre."""
    clip_iters: int = Field(1, ge=1)
    """Centered clipping: iterations L (1 streams chunk by chunk; more keep the round's
    updates)."""
    client_failure_rate: float = Field(0.0, ge=0, lt=1)
    """Probability that a sampled client drops out of a round (seeded)."""
    min_clients: int = Field(1, ge=1)
    """Usable updates a round needs; with fewer, the round is retried with a new sample."""
    max_retries: int = Field(3, ge=0)
    """Retries of a round that got too few usable updates before the run stops."""
    finetune: int = Field(0, ge=0)
    """Personalization: local steps from the final global model before each client's local
    test (0 = off; needs local_test_fraction > 0)."""
    local_test_fraction: float = Field(0.0, ge=0, lt=1)
    """Fraction of each client's partition held out as its local test split (0 = none)."""
