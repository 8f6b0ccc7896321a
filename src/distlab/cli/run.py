"""`distlab run`, `show`, `datasets`, `partition` and `strategies`: one run and what it
is made of."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from distlab.cli.display import out, print_result, progress_hook, run_progress, warning_line
from distlab.cli.flags import LAZY, SET, config_keys, key_help, names, with_config_flags

commands = typer.Typer()


@commands.command(epilog=LAZY)
@with_config_flags()
def run(
    *,
    flags: dict[str, Any],
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    resume: Path = typer.Option(
        None,
        "--resume",
        help="Continue this run directory's stopped run from its newest checkpoint, with "
        "its own config (other flags may change only where and how fast it runs).",
    ),
    set_: list[str] = SET,
    as_json: bool = typer.Option(False, "--json", help="Print summary.json to stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table."),
) -> None:
    """Train one model under one strategy and write a run directory.

    Examples:

      distlab run

      distlab run --strategy allreduce --workers 4 --epochs 2

      distlab run --strategy fedavg --clients 10 --workers 2 --partition dirichlet --alpha 0.1

      distlab run --config exp.yaml --set optimizer.momentum=0.9

      torchrun --nproc-per-node 4 -m distlab run --strategy allreduce --workers 4

    Every config key can be set with --set KEY=VALUE; `distlab strategies` lists the
    strategy.* keys.
    """
    from distlab.api import run as run_api
    from distlab.runtime.environ import launched
    from distlab.runtime.launch import is_follower

    warnings.showwarning = warning_line
    cfg = run_config(flags, set_ or [], resume)
    # Under torchrun, mpirun or Slurm every rank runs this command; rank 0 speaks for the run.
    follower = is_follower()
    progress = None if (quiet or as_json or follower) else run_progress()
    try:
        # launched(): wall and start-up seconds include the interpreter and import time.
        result = run_api(
            cfg,
            overwrite=overwrite,
            on_event=progress_hook(progress) if progress else None,
            started=launched(),
            resume=resume,
        )
    finally:
        if progress is not None and progress.live.is_started:
            progress.stop()
    if not follower and (as_json or not quiet):
        print_result(result.summary, result.run_dir, as_json)


def run_config(flags: dict[str, Any], overrides: list[str], resume: Path | None):
    """The config the flags describe, or that of the run to resume (see resumed_config)."""
    from distlab.config import build_config

    if resume is None:
        return build_config(flags["config"], config_keys(flags), overrides)
    return resumed_config(resume, flags["config"], config_keys(flags), overrides)


def resumed_config(run_dir: Path, file: Path | None, flags: dict, overrides: list[str]):
    """The config of a run to resume: its own, with what the flags change (the API refuses
    a change that matters); None when no flag is given, so the run's own is used. A fault
    that fired is left out unless the flags give fault.* again."""
    from distlab.config import build_data, validate_config
    from distlab.resume import without_fired_fault
    from distlab.runs.directory import RunPaths, read_json

    if file is None and not overrides and all(v is None for v in flags.values()):
        return None
    config = RunPaths(run_dir).config
    if not config.is_file():
        raise ValueError(f"--resume: {str(run_dir)!r} is not a run directory (no {config.name})")
    cfg = validate_config(build_data(file, flags, overrides, start=read_json(config)))
    given = build_data(file, flags, overrides)
    return cfg if "fault" in given else without_fired_fault(run_dir, cfg)


@commands.command()
def show(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json."),
) -> None:
    """Print a finished run's summary."""
    from distlab.api import load_run

    print_result(load_run(run_dir).summary, run_dir, as_json)


@commands.command()
def datasets(
    data_dir: Path = typer.Option(None, help=key_help("data_dir")),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the datasets, with shapes and sizes where their files are present."""
    from distlab.data.datasets import DATASETS

    rows = [dataset_row(name, spec.description, data_dir) for name, spec in DATASETS.items()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("name", "shape", "classes", "train", "test")
    table.add_column("description", overflow="fold")
    for r in rows:
        table.add_row(
            r["name"],
            str(tuple(r["shape"])) if "shape" in r else "missing",
            str(r.get("classes", "-")),
            str(r.get("train", "-")),
            str(r.get("test", "-")),
            r["description"],
        )
    out.print(table)
    # Whole lines, never folded into a cell: the user copies the directory from them.
    for r in rows:
        if "missing" in r:
            out.print(f"{r['name']}: {r['missing']}", soft_wrap=True)


def dataset_row(name: str, description: str, data_dir: Path | None) -> dict[str, Any]:
    """A dataset's name and description, and its shape and sizes, or why it is missing."""
    from distlab.data.datasets import load_dataset

    row: dict[str, Any] = {"name": name, "description": description}
    try:
        data = load_dataset(name, data_dir)
        row.update(
            shape=list(data.input_shape),
            classes=data.classes,
            train=len(data.y_train),
            test=len(data.y_test),
        )
    except ValueError as exc:
        row["missing"] = str(exc)
    return row


@commands.command("partition")
def partition_data(
    dataset: str = typer.Option("mnist-sample", help=key_help("dataset")),
    clients: int = typer.Option(10, help="Number of clients (parts); >= 1."),
    scheme: str = typer.Option("iid", help=f"Partition scheme: {names('partition')}."),
    alpha: float = typer.Option(None, help=key_help("partition.alpha")),
    min_size: int = typer.Option(None, "--min-size", help=key_help("partition.min_size")),
    balance: bool = typer.Option(
        None, "--balance/--no-balance", help=key_help("partition.balance")
    ),
    shards_per_client: int = typer.Option(None, help=key_help("partition.shards_per_client")),
    classes_per_client: int = typer.Option(None, help=key_help("partition.classes_per_client")),
    seed: int = typer.Option(0, help=key_help("seed")),
    data_dir: Path = typer.Option(None, help=key_help("data_dir")),
    plot: Path = typer.Option(None, help="Also draw the class counts per client (.png or .svg)."),
    kind: str = typer.Option("bar", help="Plot kind: bar (stacked) or heatmap."),
    as_json: bool = typer.Option(False, "--json", help="Print sizes, counts and metrics as JSON."),
) -> None:
    """Split a dataset's training labels among clients and show how skewed the split is.

    Examples:

      distlab partition --clients 10 --scheme dirichlet --alpha 0.1 --plot split.png

      distlab partition --scheme shards --shards-per-client 2 --json
    """
    from pydantic import ValidationError

    from distlab.config import describe_error
    from distlab.data.datasets import load_dataset
    from distlab.data.partition import make_scheme, partition, partition_metrics
    from distlab.plots import check_plot, plot_partition

    if plot is not None:
        check_plot(plot, kind)
    params = dict(alpha=alpha, min_size=min_size, balance=balance)
    params.update(shards_per_client=shards_per_client, classes_per_client=classes_per_client)
    try:
        config = make_scheme(scheme, **params)
    except ValidationError as exc:
        raise ValueError(describe_error(exc)) from None
    labels = load_dataset(dataset, data_dir).y_train.numpy()
    part = partition(labels, clients, config, seed)
    metrics = partition_metrics(part)
    if plot is not None:
        title = f"{dataset}: {scheme}, {clients} clients, TV {metrics['tv_distance']:.3f}"
        plot_partition(part.counts, plot, kind, title)
    if as_json:
        keys = ("scheme", "clients", "sizes", "counts", "tv_distance", "classes_per_client")
        record = dict(scheme=scheme, sizes=part.sizes, counts=part.counts.tolist(), **metrics)
        print(json.dumps({k: record[k] for k in keys}))
    else:
        print_partition(part, metrics, f"{dataset}: {scheme}, {clients} clients")


def print_partition(part: Any, metrics: dict[str, Any], title: str) -> None:
    """Each client's size and top classes, then how far the split is from IID."""
    from distlab.experiments.report import partition_table_rows

    table = Table("client", "size", "classes", "top classes", title=title)
    for row in partition_table_rows(part):
        table.add_row(str(row["client"]), str(row["size"]), str(row["classes"]), row["top"])
    out.print(table)
    out.print(
        f"sizes min {metrics['size_min']} / median {metrics['size_median']:g} / max "
        f"{metrics['size_max']}; mean TV distance to the global class mix "
        f"{metrics['tv_distance']:.3f} (0 = IID)"
    )


@commands.command()
def strategies(
    name: str = typer.Argument(None, help="One strategy; all when left out."),
) -> None:
    """List the strategies and every strategy.* key each one takes, with its meaning.

    Example: distlab strategies fedavg
    """
    from distlab.strategies import STRATEGIES, params_for

    for each in [name] if name else list(STRATEGIES):
        params = params_for(each)
        keys = {k: f for k, f in params.model_fields.items() if k != "name"}
        if not keys:
            out.print(f"{each}: {params.__doc__} No strategy.* keys.", soft_wrap=True)
            continue
        table = Table("key", "default", "meaning", title=f"{each}: {params.__doc__}")
        for key, field in keys.items():
            table.add_row(f"strategy.{key}", repr(field.default), field.description or "")
        out.print(table)
