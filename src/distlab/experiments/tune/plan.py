"""A search, checked before Ray starts: `plan_tune` turns the base config, the space and the
options into a `TunePlan`, and refuses in one line anything that would fail later (an
option, a key of the space, any configuration the space can give, as `distlab run` would
check it). The plan is kept in OUT beside the search, so `--resume` continues only the same
search.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distlab.experiments.tune.records import METRICS
from distlab.experiments.tune.space import Domain, check_trials, grid_size, parse_space
from distlab.runs.directory import TUNE

SEARCHES = ("grid", "random", "optuna")
SCHEDULERS = ("fifo", "asha")
MODES = ("max", "min")
DEFAULT_MODE = {"accuracy": "max", "loss": "min"}
# Trials a search without grid keys runs unless --trials says otherwise.
DEFAULT_SAMPLES = 10
# Keys each trial sets itself: its run directory is OUT/trials/<trial>.
RESERVED_KEYS = ("name", "out_dir")
RAY_DIR = "ray"
OPTUNA_MISSING = "--search optuna needs Optuna: pip install 'distlab[optuna]'"


@dataclass(frozen=True)
class TunePlan:
    """One search, checked: the base config (unvalidated mapping), the space, and how Tune
    runs it. `cpus` is the most processes one trial needs."""

    base: dict[str, Any]
    space: dict[str, Domain]
    out: Path
    trials: int
    search: str
    scheduler: str
    metric: str
    mode: str
    max_concurrent: int | None
    cpus: int
    cwd: str

    def record(self) -> dict[str, Any]:
        """What makes two searches the same (the search's record in OUT): --resume
        continues only this one."""
        return {
            "base": self.base,
            "space": {k: {d.kind: list(d.values)} for k, d in self.space.items()},
            "trials": self.trials,
            "search": self.search,
            "scheduler": self.scheduler,
            "metric": self.metric,
            "mode": self.mode,
            "max_concurrent": self.max_concurrent,
        }

    def run_dir(self, trial: str) -> Path:
        """The trial's run directory, its record."""
        return self.out / "trials" / trial

    def log(self, trial: str) -> Path:
        """Where the trial's run wrote its stderr."""
        return self.out / "logs" / f"{trial}.log"


def plan_tune(
    base: dict[str, Any],
    space: dict[str, Domain],
    out: str | Path,
    trials: int | None = None,
    search: str = "grid",
    scheduler: str = "fifo",
    metric: str = "accuracy",
    mode: str | None = None,
    max_concurrent: int | None = None,
) -> TunePlan:
    """Check every option and every configuration the space can give (each grid point with
    the first value of the sampled keys, and each sampled value once) before Ray starts;
    ValueError (one line, naming the key) otherwise."""
    check_choice("--search", search, SEARCHES)
    check_choice("--scheduler", scheduler, SCHEDULERS)
    check_choice("--metric", metric, tuple(METRICS))
    mode = mode or DEFAULT_MODE[metric]
    check_choice("--mode", mode, MODES)
    if max_concurrent is not None and max_concurrent < 1:
        raise ValueError(f"--max-concurrent must be >= 1 (got {max_concurrent})")
    if search == "optuna":
        check_optuna()
    trials = count_trials(space, search, trials)
    for key in space:
        check_key(key)
    base = copy.deepcopy(base)
    base.setdefault("threads", 1)  # trials run side by side: one torch thread per process
    cpus = check_points(base, space)
    # Trials start their runs from here, so relative paths in the config (data_dir) hold.
    cwd = str(Path.cwd())
    return TunePlan(
        base, space, Path(out).resolve(), trials, search, scheduler, metric, mode,
        max_concurrent, cpus, cwd,
    )  # fmt: skip


def check_choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{flag} must be one of {', '.join(allowed)} (got {value!r})")


def check_optuna() -> None:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ValueError(OPTUNA_MISSING) from None


def count_trials(space: dict[str, Domain], search: str, trials: int | None) -> int:
    """Grid search runs every grid point, each pass sampling the other keys afresh, so its
    trials are a multiple of the grid; random and Optuna search sample grid keys too."""
    grid = grid_size(space) if search == "grid" else 1
    has_grid = search == "grid" and any(d.is_grid for d in space.values())
    if trials is None:
        return grid if has_grid else DEFAULT_SAMPLES
    check_trials(trials)
    if trials % grid:
        raise ValueError(
            f"--trials {trials} with a grid of {grid} configurations: give a multiple of "
            f"{grid} (or --search random to sample the grid keys)"
        )
    return trials


def check_key(key: str) -> None:
    from distlab.config import config_field

    if key in RESERVED_KEYS:
        raise ValueError(f"search space key {key!r}: each trial names its own run directory")
    if config_field(key) is None:
        raise ValueError(
            f"search space key {key!r} is not a config field (use a config key such as "
            "optimizer.lr, workers, batch_size, strategy.local_epochs)"
        )


def check_points(base: dict[str, Any], space: dict[str, Domain]) -> int:
    """Check the configurations the space gives as `distlab run` would (config, dataset,
    model fit, process count), in one `api.preflight`; the most processes one of them
    needs."""
    from distlab.api import preflight

    configs = {}
    for values in sample_points(space):
        label = ", ".join(f"{k}={v}" for k, v in values.items())
        configs[f"search space point {label}"] = trial_data(base, values)
    return max(c.processes for c in preflight(configs).values())


def sample_points(space: dict[str, Domain]) -> list[dict[str, Any]]:
    """Every grid point with the first value of each sampled key, then each other value of
    a sampled key (both bounds of a range) once, at the first grid point."""
    grid = {k: d.values for k, d in space.items() if d.is_grid}
    first = {k: d.values[0] for k, d in space.items() if not d.is_grid}
    points = [
        {**dict(zip(grid, combo, strict=True)), **first}
        for combo in itertools.product(*grid.values())
    ]
    for key, domain in space.items():
        if not domain.is_grid:
            points += [{**points[0], key: value} for value in domain.values[1:]]
    return points


def trial_data(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The base config with a trial's parameters. Where the space picks the strategy, base
    strategy keys the trial's strategy does not take are left out, as in a sweep; otherwise
    the keys are set directly, so a trial's worker need not import the strategies (torch)."""
    from distlab.config import set_dotted
    from distlab.experiments.sweep import cell_config

    if "strategy.name" in params:
        return cell_config(base, params)[0]
    data = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(data, key, value)
    return data


def plain_params(params: dict[str, Any]) -> dict[str, Any]:
    """Tune's sampled values as plain Python (numpy scalars from some searchers)."""
    return {k: v.item() if hasattr(v, "item") else v for k, v in params.items()}


# --- the search's record in OUT ----------------------------------------------------------------


def check_out(plan: TunePlan, resume: bool) -> None:
    """A new search needs an empty OUT; --resume needs the same search in it."""
    if resume:
        if read_record(plan.out) != json.loads(json.dumps(plan.record(), default=str)):
            raise ValueError(
                f"--resume: {str(plan.out)!r} holds another search (its config, space or "
                "options differ): give the same ones, or another --out"
            )
    elif plan.out.exists() and any(plan.out.iterdir()):
        raise ValueError(
            f"--out {str(plan.out)!r} is not empty: --resume to continue its search, or "
            "another --out"
        )


def prepare_out(plan: TunePlan, resume: bool) -> None:
    check_out(plan, resume)
    if not resume:
        plan.out.mkdir(parents=True, exist_ok=True)
        record = json.dumps(plan.record(), indent=2, default=str)
        (plan.out / TUNE).write_text(record + "\n")


def read_record(out: Path) -> dict[str, Any]:
    """The search kept in OUT, for --resume; ValueError when there is none."""
    try:
        record = json.loads((Path(out) / TUNE).read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or not (Path(out) / RAY_DIR / "tuner.pkl").exists():
        raise ValueError(
            f"--resume: {str(out)!r} holds no search to continue; run without --resume to start one"
        )
    return record


def plan_from_record(out: str | Path) -> TunePlan:
    """The search kept in OUT, checked again: `--resume --out OUT` alone continues it."""
    record = read_record(Path(out))
    return plan_tune(
        record["base"], parse_space(record["space"]), out, record["trials"], record["search"],
        record["scheduler"], record["metric"], record["mode"], record["max_concurrent"],
    )  # fmt: skip
