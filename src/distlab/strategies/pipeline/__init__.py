"""Pipeline model parallelism: the model cut into stages, one process each.

The course seed 003 puts the convolutions on one process and the fully connected layers on
another. Here `--workers S` is the number of stages; the cuts are the model's declared split
points or the ones that balance parameters or compute time (split.py). The global batch is
cut into M microbatches that flow through the stages, so that stages work at once on
different microbatches:

- gpipe: fill-drain, all forward passes then all backward passes (Huang et al. 2019, "GPipe:
  Efficient Training of Giant Neural Networks using Pipeline Parallelism");
- 1f1b: one forward, one backward in the steady state (Narayanan et al. 2019, "PipeDream:
  Generalized Pipeline Parallelism for DNN Training", in its synchronous flushed form);
  both on torch.distributed.pipelining (engine.py);
- rpc: the seed's way, a driver process holding remote references to the stage modules,
  trained with distributed autograd, each stage stepping its own optimizer (rpc.py).

Every schedule computes the gradient of the whole batch, so one step equals one step of
centralized SGD. The first stage (or the driver) reads the batches, the last stage (or the
driver) computes the loss and leads the record; it collects the stages' weights for each
evaluation and for model.pt, a state_dict of the unsplit model. The summary sets the
measured idle share of the stages beside the bubble of the schedule, (S - 1) / (M + S - 1),
and the measured activation and gradient bytes beside 2 x 4 x elements per sample x batch
per cut per step.

Checkpoints (--set checkpoint.every=N, N optimizer steps on the global batch) hold, for every
stage, its parameters, its optimizer's state, its random generators and counters and its
meter's totals, with the schedule's position (step, epoch, batch) and the cuts (split=time
would measure new ones); every stage writes its file at the same step, the rpc driver
asking each stage to write its own. gpipe and 1f1b resume bit for bit. So does rpc with one
microbatch; with several, distributed autograd adds a stage's microbatch gradients in the
order their backward calls arrive, so two uninterrupted rpc runs already differ in the last
bits, and a resumed one matches as closely as they match each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from distlab.strategies.spec import StrategyBase, StrategySpec

if TYPE_CHECKING:
    from distlab.config import RunConfig
    from distlab.runtime.context import WorkerContext

DRIVER = 0  # the rpc schedule's driver rank


class Params(StrategyBase):
    """--workers S stages, one process each (plus a driver process under schedule rpc)."""

    name: Literal["pipeline"] = "pipeline"
    schedule: Literal["gpipe", "1f1b", "rpc"] = "gpipe"
    """gpipe: fill-drain; 1f1b: one forward, one backward; rpc: a driver with remote stages."""
    microbatches: int = Field(4, ge=1)
    """Microbatches per global batch; must divide --batch-size."""
    split: Literal["declared", "params", "time"] = "declared"
    """The model's declared cuts, or cuts balancing stage parameters or measured time."""


def processes(cfg: RunConfig) -> int:
    return cfg.workers + (1 if cfg.strategy.schedule == "rpc" else 0)


def role(cfg: RunConfig, rank: int) -> str:
    return "driver" if cfg.strategy.schedule == "rpc" and rank == DRIVER else "stage"


def lead(cfg: RunConfig) -> int:
    """The rank that computes the loss: the driver under rpc, else the last stage."""
    return DRIVER if cfg.strategy.schedule == "rpc" else cfg.workers - 1


def check(cfg: RunConfig) -> None:
    check_stages(cfg.model, cfg.workers, cfg.strategy.split)
    check_microbatches(cfg.batch_size, cfg.strategy.microbatches)
    if cfg.strategy.schedule == "rpc":
        check_rpc(cfg)
    if cfg.strategy.schedule == "1f1b" and cfg.strategy.microbatches < cfg.workers:
        raise ValueError(
            f"strategy.microbatches ({cfg.strategy.microbatches}) must be >= --workers "
            f"({cfg.workers}) under schedule 1f1b, which keeps one microbatch per stage in "
            "flight (or use schedule gpipe)"
        )


def check_rpc(cfg: RunConfig) -> None:
    """The driver runs the step loop; the stages only answer its calls."""
    if cfg.fault is not None and cfg.fault.rank != DRIVER:
        raise ValueError(
            f"fault.rank {cfg.fault.rank} under schedule rpc: stages only answer the driver's "
            "calls, so a fault is injected at the driver (allowed: 0)"
        )
    if cfg.device != "cpu":
        raise ValueError(
            f"schedule rpc runs on the CPU (got --device {cfg.device}; allowed: cpu), "
            "use schedule gpipe or 1f1b on CUDA"
        )


def check_stages(model: str, stages: int, split: str) -> None:
    from distlab.strategies.pipeline.split import split_points

    points = split_points(model)
    if stages > points.layers:
        raise ValueError(
            f"--workers {stages} asks for {stages} pipeline stages but model {model} can be "
            f"cut into at most {points.layers} (allowed: 1 to {points.layers})"
        )
    cuts = len(points.declared)
    if split == "declared" and stages > cuts + 1:
        raise ValueError(
            f"--workers {stages} needs {stages - 1} cut points but model {model} declares "
            f"{cuts} (allowed: 1 to {cuts + 1} stages; strategy.split=params or time cuts "
            f"anywhere, up to {points.layers})"
        )


def check_microbatches(batch: int, microbatches: int) -> None:
    if batch % microbatches:
        divisors = [d for d in range(1, batch + 1) if batch % d == 0]
        raise ValueError(
            f"strategy.microbatches ({microbatches}) must divide --batch-size ({batch}) "
            f"(allowed: {', '.join(map(str, divisors))})"
        )


def run(ctx: WorkerContext, params: Params) -> None:
    if params.schedule == "rpc":
        from distlab.strategies.pipeline.rpc import run_rpc

        run_rpc(ctx, params)
    else:
        from distlab.strategies.pipeline.engine import run_stage

        run_stage(ctx, params)


def no_partition(cfg: RunConfig, labels) -> None:
    """Every stage sees every sample: there is no division of the data to record."""
    return None


def batch_meaning(cfg: RunConfig) -> str:
    return f"global (every stage, in {cfg.strategy.microbatches} microbatches)"


def no_comm_analysis(cfg: RunConfig, per_rank: dict, params: int, steps: int) -> dict:
    """The pipeline's bytes need the cut sizes, which only the run knows: extra_summary."""
    return {}


def pipeline_summary(cfg: RunConfig, lead_events: list[dict]) -> dict:
    """Bubble (measured idle share of each stage beside (S-1)/(M+S-1)) and activation plus
    gradient bytes per step (measured on the cuts beside 2 x 4 x elements x batch)."""
    end = next((e for e in lead_events if e.get("phase") == "train_end"), None)
    record = (end or {}).get("pipeline")
    steps = [e for e in lead_events if e["kind"] == "step"]
    if not record or not steps:
        return {}
    stages, m = cfg.workers, cfg.strategy.microbatches
    idle = [idle_share(s) for s in record["stages"]]
    samples = sum(e["samples"] for e in steps)
    return {
        "stages": stages,
        "microbatches": m,
        "schedule": cfg.strategy.schedule,
        "cuts": record["cuts"],
        "stage_params": record["stage_params"],
        "bubble_analytic": round((stages - 1) / (m + stages - 1), 6),
        "bubble_measured": round(sum(idle) / len(idle), 4) if None not in idle else None,
        "bubble_measured_per_stage": idle,
        "bytes_per_step_measured": round(
            sum(s["bytes_sent"] for s in record["stages"]) / len(steps), 1
        ),
        "bytes_per_step_analytic": round(
            2 * 4 * sum(record["cut_elements"]) * samples / len(steps), 1
        ),
        **record.get("driver", {}),
    }


def idle_share(stage: dict) -> float | None:
    seconds = stage["step_seconds"]
    if not seconds:
        return None
    return round(max(0.0, 1 - stage["busy_seconds"] / seconds), 4)


SPEC = StrategySpec(
    "pipeline",
    Params,
    run,
    processes=processes,
    role=role,
    lead=lead,
    check=check,
    data_partition=no_partition,
    comm_analysis=no_comm_analysis,
    batch_meaning=batch_meaning,
    extra_summary=pipeline_summary,
    network=None,
    no_network="pipeline stages pass activations, whose sizes this model does not know",
    no_compression="its stages pass activations and their gradients, not model updates",
    summary_rows=(
        ("pipeline bubble measured", "bubble_measured"),
        ("pipeline bubble analytic", "bubble_analytic"),
    ),
)
