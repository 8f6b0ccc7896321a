"""`distlab report`, `compare`, `sweep`, `tune` and `tune-sklearn`: many runs, the report
that compares them, and searches over hyperparameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from distlab.cli.display import (
    cell_display,
    err,
    format_number,
    print_best,
    print_cells,
    print_plan,
    print_repeats,
    print_tuned,
    sweep_progress,
    trial_line,
    wide,
)
from distlab.cli.flags import SET, SWEEP_SKIPS, config_data, with_config_flags

commands = typer.Typer()

CONFIG_EPILOG = "Every flag of `distlab run` (see distlab run --help) sets the config."
BASE_EPILOG = "Every flag of `distlab run` (see distlab run --help) sets the base config."


@commands.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run or sweep directories to compare."),
    out_dir: Path = typer.Option(
        Path("report"), "--out", "-o", help="Directory for the report (created if missing)."
    ),
    target: float = typer.Option(None, help="Report seconds to reach this test accuracy."),
    network: str = typer.Option(
        None,
        help="Also predict speedup on these networks with the alpha-beta model, e.g. "
        "1gbit,10gbit,100mbit, or a link file of distlab probe-network (its own alpha and "
        "beta): 1gbit,link.json (whatif.png).",
    ),
    latency: str = typer.Option("50us", help="Per-message latency for --network (us, ms)."),
    force: bool = typer.Option(False, help="Put runs of different datasets in one report."),
    baseline: str = typer.Option(
        None,
        help="Speedup against this strategy's one-process runs (e.g. centralized). "
        "[default: each run's own strategy]",
    ),
) -> None:
    """Compare runs and sweeps: report.html, report.md, results.csv and the figures
    speedup.png and accuracy.png (against workers: median over seeds and repeats, bars from
    min to max), curves.png, communication.png (measured against the formula),
    partition-*.png and, with --network, whatif.png. Speedup is T(1)/T(N) against the
    completed one-process runs of the same strategy (--baseline: of another) with the same
    dataset, model, samples, batch meaning and torch threads per process (the notes say why
    a run has none). A run is flagged when it was disturbed (step time p90 over 3x its
    median, load above the cores, CPU time stolen) or its efficiency is above 1.05.

    Examples:

      distlab report sweeps/scale --out report

      distlab report runs/centralized runs/allreduce --target 0.9 --network 1gbit,10gbit
    """
    from distlab.experiments.whatif import parse_latency

    parse_latency(latency)  # a bad --latency is refused even where no --network uses it
    print_report(
        run_dirs, out_dir, target=target, networks=network, latency=latency, force=force,
        baseline=baseline,
    )  # fmt: skip


def print_report(run_dirs: list[Path], out_dir: Path, **options: Any) -> None:
    """Write the report of `run_dirs` into `out_dir` (`options`: write_report's target,
    networks, latency, force and baseline), then print its table, repeats and notes."""
    from distlab.experiments.report import console_columns, write_report
    from distlab.runs.directory import REPEATS

    # write_report checks every input and run directory before writing anything.
    rows = write_report(run_dirs, out_dir, **options)
    title = f"report written to {out_dir} (report.html; every column in results.csv)"
    columns = console_columns(rows)
    table = Table(*columns.values(), title=title)
    for row in rows:
        table.add_row(*("-" if row[k] is None else format_number(row[k]) for k in columns))
    console = wide(200)
    console.print(table)
    print_repeats(console, out_dir / REPEATS)
    for row in rows:
        for note in (row["speedup_note"], row["flags"]):
            if note:
                console.print(f"{row['run']}: {note}", soft_wrap=True)


@commands.command(epilog=CONFIG_EPILOG)
@with_config_flags(skip=SWEEP_SKIPS)
def compare(
    strategies: str = typer.Option(
        None,
        help="Comma-separated strategies. [default: centralized, allreduce, param-server, "
        "fedavg iid, fedavg dirichlet 0.1]",
    ),
    grid: list[str] = typer.Option(None, "--grid", "-g", help="Also sweep KEY=V1,V2 (repeatable)."),
    name: str = typer.Option("compare", help="Its directory is OUT_DIR/NAME."),
    out_dir: Path = typer.Option(Path("sweeps"), "--out-dir", help="Where sweeps go."),
    jobs: int = typer.Option(1, help="Cells run at once, never more processes than cores."),
    overwrite: bool = typer.Option(False, help="Start again, removing earlier cells."),
    target: float = typer.Option(None, help="Report seconds to reach this test accuracy."),
    network: str = typer.Option(None, help="Networks for the what-if model (1gbit,10gbit)."),
    latency: str = typer.Option("50us", help="Per-message latency for --network."),
    repeats: int = typer.Option(1, help="Run each strategy this many times, interleaved."),
    baseline: str = typer.Option(
        "centralized",
        help="Speedups are against this strategy's one-process run (run first, as one "
        "process, whether --strategies names it or not).",
    ),
    *,
    flags: dict[str, Any],
    set_: list[str] = SET,
) -> None:
    """One config under several strategies: a sweep, then its report in OUT_DIR/NAME/report.
    --workers defaults to 2 here (a strategy needs peers to compare). Every run gets the
    same torch threads per process, so the speedups compare like with like; with
    --repeats 3 the report gives each figure's median and min-max.

    Example: distlab compare --epochs 1 --workers 4
    """
    from distlab.experiments.compare import (
        check_report_inputs,
        compare_base,
        compare_cells,
        compare_spec,
    )
    from distlab.experiments.sweep import raise_for_failures

    cells = compare_cells(strategies, baseline)
    check_report_inputs(target, baseline, out_dir / name / "report", network, latency)
    spec = compare_spec(cells, repeats)
    base = compare_base(config_data(flags, set_))
    plan, results = run_sweep(base, grid, spec, name, out_dir, jobs, False, overwrite)
    if any(r.status == "completed" for r in results):
        print_report(
            [plan.root], plan.root / "report", target=target, networks=network, latency=latency,
            baseline=baseline,
        )  # fmt: skip
    raise_for_failures(plan, results)


@commands.command(epilog=BASE_EPILOG)
@with_config_flags(skip=SWEEP_SKIPS)
def sweep(
    grid: list[str] = typer.Option(
        None,
        "--grid",
        "-g",
        help="KEY=V1,V2,...: one axis of the grid (repeatable; axes multiply). KEY is a run "
        "flag (workers, strategy, seed, lr, batch-size) or a config key (strategy.period).",
    ),
    file: Path = typer.Option(
        None, "--file", "-f", help="Sweep file (YAML, TOML or JSON): base, grid, cells, name."
    ),
    name: str = typer.Option(
        None, help="Sweep name; its directory is OUT_DIR/NAME. [default: the file's name or sweep]"
    ),
    out_dir: Path = typer.Option(Path("sweeps"), "--out-dir", help="Where sweeps go."),
    jobs: int = typer.Option(1, help="Cells run at once, never more processes than cores."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the cells; run nothing."),
    overwrite: bool = typer.Option(False, help="Start the sweep again, removing its cells."),
    address: str = typer.Option(None, help="HOST:PORT of a Ray head: cells run as Ray tasks."),
    repeats: int = typer.Option(
        None,
        help="Run each cell this many times, interleaved (CELL_r1, CELL_r2, ...); the report "
        "gives the median and min-max. [default: the file's repeats, else 1]",
    ),
    *,
    flags: dict[str, Any],
    set_: list[str] = SET,
) -> None:
    """Run a grid of configs, one run directory per cell, resumable. Every cell gets the
    same torch threads per process (cores // the most processes of any cell) unless
    threads is set, so that timings compare.

    Examples:

      distlab sweep --name scale --grid strategy=allreduce,param-server --grid workers=1,2

      distlab sweep --file examples/seed002-psgd.yaml

    Rerunning the same command skips the finished cells. Then: distlab report sweeps/NAME
    """
    from distlab.experiments.sweep import raise_for_failures, read_sweep_file

    spec = read_sweep_file(file) if file else {}
    if repeats is not None:
        spec["repeats"] = repeats
    base = config_data(flags, set_, spec.get("base"))
    name = name or spec.get("name") or (file.stem if file else None)
    done = run_sweep(base, grid, spec, name, out_dir, jobs, dry_run, overwrite, address)
    if done is not None:
        raise_for_failures(*done)


def run_sweep(base, grid, spec, name, out_dir, jobs, dry_run, overwrite, address=None):
    """Plan (every cell validated), then run with a progress line per cell; returns the plan
    and the results, or None for a dry run."""
    from distlab.experiments.sweep import plan_sweep
    from distlab.experiments.sweep import run_sweep as run_cells

    plan = plan_sweep(base, grid, spec, name, out_dir, jobs)
    if dry_run:
        print_plan(plan)
        return None
    progress = sweep_progress()
    with progress:
        results = run_cells(plan, jobs, overwrite, cell_display(progress, plan), address)
    print_cells(plan, results)
    return plan, results


@commands.command("tune-sklearn")
def tune_sklearn(
    estimator: str = typer.Option(
        "random-forest",
        help="random-forest, gradient-boosting, logistic-regression, svm or knn.",
    ),
    dataset: str = typer.Option(
        None,
        help="iris, wine, breast-cancer, digits (bundled) or a distlab set, flattened "
        "(mnist-sample). [default: iris]",
    ),
    csv_file: Path = typer.Option(None, "--csv", help="CSV file with a header; numeric features."),
    target: str = typer.Option(None, help="The --csv column that holds the class labels."),
    space: Path = typer.Option(
        None, help="Search space file: NAME: {grid|choice|uniform|loguniform: [...]}."
    ),
    param: list[str] = typer.Option(
        None, "--param", "-p", help="NAME=V1,V2,...: one grid axis (repeatable; axes multiply)."
    ),
    search: str = typer.Option("grid", help="grid (every cell) or random (--trials draws)."),
    trials: int = typer.Option(
        None, help="Random draws, or repeats of the grid. [default: grid 1, random 10]"
    ),
    cv: int = typer.Option(5, help="Folds of the stratified, seeded cross-validation."),
    default: bool = typer.Option(
        False, "--default", help="Also score the default hyperparameters (CV and test)."
    ),
    scaling: str = typer.Option(
        None, help="Node counts, e.g. 1,2,3: the same search on a local Ray cluster of each size."
    ),
    out_dir: Path = typer.Option(Path("tune-sklearn"), "--out", "-o", help="Results directory."),
    address: str = typer.Option(None, help="HOST:PORT of a running Ray head. [default: local]"),
    seed: int = typer.Option(0, help="Seed of the split, the folds and the estimator."),
    cpus_per_trial: int = typer.Option(1, help="CPUs Ray gives a trial; its n_jobs."),
) -> None:
    """Search a scikit-learn estimator's hyperparameters on Ray Tune, one trial per
    configuration, scored by K-fold cross-validation accuracy; the best configuration's
    held-out test score beside it. Writes results.csv, results.md, best.yaml, metric.png and,
    with --scaling, scaling.md, scaling.csv and scaling.png.

    Examples:

      distlab tune-sklearn --dataset breast-cancer --space space.yaml --cv 5 --default

      distlab tune-sklearn --estimator knn --csv data.csv --target label -p n_neighbors=1,5,9

      distlab tune-sklearn --dataset wine -p max_depth=2,4 --scaling 1,2,3
    """
    from distlab.experiments.tune import sklearn as sk

    plan = sk.Search(estimator, sk.build_space(space, param), search, trials, cv, seed,
                     cpus_per_trial)  # fmt: skip
    nodes = sk.parse_nodes(scaling)
    table = sk.load_table(dataset, csv_file, target, seed)
    sk.check_run(plan, table, address, nodes)
    many = "s" if plan.configs != 1 else ""
    err.print(f"{plan.configs} configuration{many} of {estimator} on {table.name}, {cv}-fold CV")
    print_tuned(sk.tune_sklearn(plan, table, out_dir, address, nodes, default))


# The longer options of `distlab tune`, declared apart so that the command reads at a glance.
TUNE_TRIALS = typer.Option(
    None,
    help="Trials to run; for grid search a multiple of the grid (each pass samples the "
    "other keys afresh). [default: the grid once, or 10 without grid keys]",
)
TUNE_SEARCH = typer.Option(
    "grid",
    help="grid (Tune's variant generator), random (grid keys sampled too) or optuna "
    "(needs: pip install 'distlab[optuna]').",
)
TUNE_SCHEDULER = typer.Option(
    "fifo",
    help="fifo (every trial runs to its end) or asha (stops the worse trials at their "
    "evals 2, 4, 8, ...).",
)
TUNE_OUT = typer.Option(
    None,
    "--out",
    "-o",
    help="Search directory: results.csv, results.md, best.yaml, "
    "metric.png, trials/ and Ray's state. [default: tune/NAME, NAME the config's name or the "
    "space file's]",
)
TUNE_ADDRESS = typer.Option(
    None,
    help="HOST:PORT of a running Ray head (ray start --head). [default: a local Ray "
    "with this machine's cores]",
)


@commands.command(
    epilog="A space file maps config keys to domains: optimizer.lr: {loguniform: [0.001, 0.1]}, "
    "strategy.local_epochs: {choice: [1, 2, 5]}, workers: {grid: [1, 2]} (uniform: [lo, hi] too)."
)
def tune(
    config: Path = typer.Option(
        None, "--config", "-c", help="Base config (YAML, TOML or JSON) every trial starts from."
    ),
    space: Path = typer.Option(
        None,
        "--space",
        "-s",
        help="Search space file: config keys to grid, choice, uniform or loguniform domains.",
    ),
    trials: int = TUNE_TRIALS,
    search: str = TUNE_SEARCH,
    scheduler: str = TUNE_SCHEDULER,
    metric: str = typer.Option(
        "accuracy", help="accuracy or loss: each eval's test value, the run's final one at its end."
    ),
    mode: str = typer.Option(None, help="max or min. [default: max for accuracy, min for loss]"),
    max_concurrent: int = typer.Option(
        None, "--max-concurrent", help="Trials at once. [default: as many as the CPUs hold]"
    ),
    out_dir: Path = TUNE_OUT,
    address: str = TUNE_ADDRESS,
    resume: bool = typer.Option(
        False, "--resume", help="Continue the stopped search in --out (Tune's own restore)."
    ),
) -> None:
    """Search any config keys on Ray Tune: each trial is a `distlab run` of the base config
    with the trial's values, in OUT/trials/<trial>/, asking Ray for one CPU per process. Every
    eval is reported to Tune as it happens, so ASHA stops bad trials early. OUT/best.yaml runs
    the best trial again: distlab run --config OUT/best.yaml.

    Examples:

      distlab tune --config base.yaml --space space.yaml --trials 8 --scheduler asha --out DIR

      distlab tune --config base.yaml --space space.yaml --search random --trials 20

      distlab tune --config base.yaml --space space.yaml --address 10.0.0.1:6379

      distlab tune --resume --out DIR
    """
    from distlab.experiments.tune.plan import plan_from_record
    from distlab.experiments.tune.search import check_where, run_tune

    if resume and config is None and space is None and out_dir is not None:
        plan = plan_from_record(out_dir)
    else:
        plan = tune_plan(config, space, out_dir, trials, search, scheduler, metric, mode,
                         max_concurrent)  # fmt: skip
    check_where(plan, address, resume)
    where = f"the Ray cluster at {address}" if address else "a local Ray"
    err.print(f"{plan.trials} trials, up to {plan.cpus} CPUs each, on {where}; {plan.out}")
    print_best(run_tune(plan, address, resume, trial_line(plan)))


def tune_plan(config, space, out_dir, *choices: Any):
    """A new search's plan: the base config and the space file, trials in OUT (by default
    tune/NAME); `choices` are plan_tune's trials, search, scheduler, metric, mode and
    max_concurrent."""
    from distlab.config import build_data
    from distlab.experiments.tune.plan import plan_tune
    from distlab.experiments.tune.space import read_space

    if space is None:
        raise ValueError("--space is required (a file of KEY: {grid: [...]} and the like)")
    base = build_data(config)
    out_dir = out_dir or Path("tune") / (base.get("name") or space.stem)
    base.pop("name", None)
    return plan_tune(base, read_space(space), out_dir, *choices)
