"""StrategySpec: the contract between a training paradigm and the rest of distlab.

A strategy is one module that builds a `StrategySpec`: its name, its `Params` model and its
`run(ctx, params)` function, plus the answers the layers above need before any process
starts (how many processes, each rank's role, which rank leads the record, cross-field
checks) and after the run (who trained on what, the communication analysis, what a batch
means). The defaults describe the data-parallel family (one worker per rank, data shared
through the sampler, gradients averaged every step), so a new data-parallel strategy is a
Params class, a run function and one `StrategySpec(...)` line.

This module imports pydantic and numpy only: the config layer and the CLI read specs without
loading torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import numpy as np

    from distlab.config import RunConfig
    from distlab.data.partition import Partition


class StrategyBase(BaseModel):
    """Base of every strategy's Params: frozen, unknown keys refused, docstrings as help."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False
    )

    name: str


# Optimizer steps no real run reaches (a thousand epochs of batch 1 on 60,000 samples is 6e7):
# a typo beyond it would start a run that never ends.
MAX_STEPS = 100_000_000


# --- defaults: the data-parallel family ---------------------------------------------------------


def one_worker_per_rank(cfg: RunConfig) -> int:
    return cfg.workers


def single_process(cfg: RunConfig) -> int:
    return 1


def worker_role(cfg: RunConfig, rank: int) -> str:
    """Every rank trains: the role of each process of a data-parallel strategy."""
    return "worker"


def lead_rank_zero(cfg: RunConfig) -> int:
    return 0


def check_data_parallel(cfg: RunConfig) -> None:
    """Split-batch cuts every global batch into one chunk per worker: a batch smaller than
    the worker count would leave a worker without data."""
    if cfg.sampler == "split-batch" and cfg.batch_size < cfg.workers:
        raise ValueError(
            f"--batch-size ({cfg.batch_size}) must be >= --workers ({cfg.workers}) under "
            "sampler split-batch, which splits each global batch across the workers"
        )


def sampler_partition(cfg: RunConfig, labels: np.ndarray) -> Partition:
    """What each worker trains on in the first epoch, as a Partition (for partition.json)."""
    import numpy as np

    from distlab.data.partition import Partition, count_classes
    from distlab.data.samplers import epoch_batches

    parts = []
    for rank in range(cfg.workers):
        batches = epoch_batches(cfg.sampler, labels, cfg.batch_size, 0, cfg.seed, rank, cfg.workers)
        parts.append(np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64))
    counts = count_classes(labels, parts, int(labels.max()) + 1)
    return Partition(parts, counts, source=f"the {cfg.sampler} sampler's first epoch")


def sampler_steps(cfg: RunConfig, labels: np.ndarray) -> int:
    """Steps each worker takes: cfg.epochs times its batches per epoch under --sampler, the
    count train_epochs walks (every rank has as many batches)."""
    from distlab.data.samplers import epoch_batches

    batches = epoch_batches(cfg.sampler, labels, cfg.batch_size, 0, cfg.seed, 0, cfg.workers)
    return cfg.epochs * len(batches)


def check_batch(cfg: RunConfig, samples: int, meaning: str, sampler_shares: bool) -> None:
    """A batch larger than the data a worker holds would silently take full-batch steps:
    under split-batch the global batch is bounded by the training set; a per-worker batch
    (random, balanced) by one worker's share; any other by the whole training set."""
    if cfg.batch_size > samples:
        raise ValueError(
            f"--batch-size {cfg.batch_size} is larger than the {samples} training samples of "
            f"{cfg.dataset} (allowed: 1 to {samples}; the batch here is {meaning})"
        )
    share = -(-samples // cfg.workers)
    if sampler_shares and cfg.sampler != "split-batch" and cfg.batch_size > share:
        raise ValueError(
            f"--batch-size {cfg.batch_size} (per worker under sampler {cfg.sampler}) is larger "
            f"than the {share} training samples each of the {cfg.workers} workers holds "
            f"(allowed: 1 to {share})"
        )


def check_steps(cfg: RunConfig, steps: int, how: str = "") -> None:
    """The run's length in steps is bounded, and an injected fault falls on one of them;
    `how` says where the count comes from and what lowers it."""
    if steps > MAX_STEPS:
        raise ValueError(f"the run would take {steps} steps{how}; at most {MAX_STEPS} are allowed")
    if cfg.fault is not None and cfg.fault.step > steps:
        raise ValueError(
            f"fault.step must be <= {steps}, the run's last step, or the fault never fires "
            f"(got {cfg.fault.step})"
        )


def data_parallel_comm(cfg: RunConfig, per_rank: dict, params: int, steps: int) -> dict:
    """Measured payload per worker per step next to the analytic 2 * P * 4 bytes, and the
    wire bytes a ring allreduce would send: 2 (N-1)/N * P * 4 per worker per step."""
    n = cfg.workers
    if n == 1:
        return {}  # one worker exchanges nothing: there is no traffic to set beside a formula
    workers = list(per_rank.values())
    measured = sum(w["bytes_sent"] + w["bytes_recv"] for w in workers) / max(len(workers), 1)
    return {
        "bytes_per_step_measured": round(measured / steps, 1) if workers else None,
        "bytes_per_step_analytic": 2 * params * 4,
        "ring_wire_bytes_per_step": round(2 * (n - 1) / n * params * 4, 1),
    }


def model_fits_data(cfg: RunConfig, data: Any) -> None:
    """Build the model once on the dataset's shapes: a mismatch (an image model on tabular
    data) is bad input, refused before any process starts."""
    from distlab.models import build_model

    build_model(cfg.model, data.input_shape, data.classes, cfg.seed)


def no_extra_summary(cfg: RunConfig, lead: list[dict]) -> dict:
    return {}


def sampler_batch_meaning(cfg: RunConfig) -> str:
    if cfg.sampler == "split-batch":
        return "global (split across workers)"
    return "per worker"


@dataclass(frozen=True)
class StrategySpec:
    """Everything distlab needs to know about one training paradigm.

    - name: the name typed after --strategy; equals the Literal default of Params.name.
    - params: the pydantic model of the strategy's `strategy.*` keys.
    - run: run(ctx, params), the body every process executes (branching on ctx.role).
    - processes(cfg): how many processes the run needs.
    - role(cfg, rank): "worker", "server", "client-host" or "stage".
    - lead(cfg): the rank whose events are the run's record (steps, rounds, evals, model.pt).
    - check(cfg): rules spanning several config fields; raises ValueError with one line.
    - check_data(cfg, data): rules that need the dataset (the models it builds fit its
      shapes, sizes bounded by the parameter count); ValueError, before any process starts.
      check_schedule then applies the rules every strategy shares (batch within the data,
      steps bounded, fault.step within them).
    - steps(cfg, labels): the steps (or rounds) each rank counts, the unit of fault.step and
      checkpoint.every, or None where unknown before the run. None (the field): the
      sampler's count for a spec that keeps the default data_partition (its workers walk
      the sampler's batches), unknown otherwise.
    - data_partition(cfg, labels): who trains on what, for partition.json; None for no record.
    - comm_analysis(cfg, per_rank, params, units): measured next to analytic bytes.
    - batch_meaning(cfg): what --batch-size means under this strategy.
    - extra_summary(cfg, lead_events): figures of the strategy's own for summary.json.
    - uses_partition: whether the `partition` config divides the data (federated strategies).
    - part_holder: who holds a part of the data, in partition.json and its figure: "worker"
      (data parallel), "client" (federated).
    - network: how the what-if network model prices its exchanges: "ring" (an allreduce
      per step), "local-ring" (one every few steps), "server", "fedavg" or "gossip"; None
      where it has no model, and no_network says why.
    - summary_rows: (label, summary key) of the strategy's own figures, in the order the
      run's table shows them after the shared ones.
    - launcher: "auto" (inline for one process, spawn for more, or the external launcher
      that started the processes); a strategy with other needs names its own launcher,
      or gives launcher(cfg) when it depends on the config ("deployed": the run is started
      by `distlab deploy`, not by `distlab run`).
    """

    name: str
    params: type[StrategyBase]
    run: Callable[[Any, Any], None]
    processes: Callable[[RunConfig], int] = one_worker_per_rank
    role: Callable[[RunConfig, int], str] = worker_role
    lead: Callable[[RunConfig], int] = lead_rank_zero
    check: Callable[[RunConfig], None] = check_data_parallel
    check_data: Callable[[RunConfig, Any], None] = model_fits_data
    data_partition: Callable[[RunConfig, Any], Partition | None] = sampler_partition
    comm_analysis: Callable[[RunConfig, dict, int, int], dict] = data_parallel_comm
    batch_meaning: Callable[[RunConfig], str] = sampler_batch_meaning
    extra_summary: Callable[[RunConfig, list[dict]], dict] = no_extra_summary
    uses_partition: bool = False
    part_holder: str = "worker"
    launcher: str | Callable[[RunConfig], str] = "auto"
    network: str | None = "ring"
    no_network: str = ""
    summary_rows: tuple[tuple[str, str], ...] = ()
    no_compression: str = ""
    """Why the strategy carries no compress.kind ("" when it compresses what it sends)."""
    threats: frozenset[str] = frozenset()
    """The privacy and robustness features the strategy carries: "central" and "dpsgd"
    (privacy.mode), "secagg" (secagg.enabled) and "attack" (attack.kind); any other that a
    run turns on is refused in one line before anything starts."""
    steps: Callable[[RunConfig, np.ndarray], int | None] | None = None

    def launcher_for(self, cfg: RunConfig) -> str:
        return self.launcher(cfg) if callable(self.launcher) else self.launcher

    def network_model(self) -> tuple[str | None, str]:
        """The what-if pattern, or None and the reason there is none."""
        if self.network is not None:
            return self.network, ""
        return None, self.no_network or f"no network model for strategy {self.name!r}"

    def walks_sampler(self) -> bool:
        """Whether the workers share the data through --sampler (the data-parallel default)."""
        return self.data_partition is sampler_partition

    def run_steps(self, cfg: RunConfig, labels: np.ndarray) -> int | None:
        """The steps (or rounds) each rank counts, or None where unknown before the run."""
        if self.steps is not None:
            return self.steps(cfg, labels)
        return sampler_steps(cfg, labels) if self.walks_sampler() else None

    def check_schedule(self, cfg: RunConfig, data: Any) -> None:
        """The rules on the run's length every strategy shares, once the dataset is known:
        the batch fits the data, the steps are bounded and fault.step is one of them."""
        labels = data.y_train.cpu().numpy()
        check_batch(cfg, len(labels), self.batch_meaning(cfg), self.walks_sampler())
        steps = self.run_steps(cfg, labels)
        if steps is None:
            return
        how = ""
        if self.steps is None:  # the sampler's count
            how = (
                f" ({cfg.epochs} epochs of {steps // cfg.epochs} batches of {cfg.batch_size}"
                "; lower --epochs or raise --batch-size)"
            )
        check_steps(cfg, steps, how)

    def __post_init__(self) -> None:
        default = self.params.model_fields["name"].default
        if default != self.name:
            raise ValueError(
                f"strategy spec {self.name!r}: Params.name defaults to {default!r}, "
                "it must default to the spec's name"
            )
