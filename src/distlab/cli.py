"""The `distlab` command. The only module that reads argv; every error becomes one line.

distlab run                                   # centralized LeNet on the embedded MNIST sample
distlab run --strategy allreduce --workers 4  # 4 local processes, gloo
torchrun --nproc-per-node 4 -m distlab run --strategy allreduce --workers 4
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Run one model on one dataset under every distributed and federated paradigm.",
)
err = Console(stderr=True)
out = Console()


def _help(path: str) -> str:
    """A config field's docstring, which is also its --help text."""
    from distlab.config import RunConfig
    from distlab.data.partition import PARTITION_SCHEMES

    model, *rest = path.split(".")
    if model == "optimizer":
        from distlab.config import OptimizerConfig

        return OptimizerConfig.model_fields[rest[0]].description or ""
    if model == "partition":
        for scheme in PARTITION_SCHEMES.values():
            if rest[0] in scheme.model_fields:
                return scheme.model_fields[rest[0]].description or ""
    if model == "strategy":
        from distlab.strategies import STRATEGIES, params_for

        for name in STRATEGIES:
            fields = params_for(name).model_fields
            if rest[0] in fields:
                return fields[rest[0]].description or ""
    return RunConfig.model_fields[model].description or ""


# flag name -> dotted config key
FLAG_KEYS = {
    "strategy": "strategy.name",
    "dataset": "dataset",
    "model": "model",
    "workers": "workers",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "optimizer.lr",
    "optimizer": "optimizer.name",
    "seed": "seed",
    "device": "device",
    "data_dir": "data_dir",
    "out_dir": "out_dir",
    "name": "name",
    "sampler": "sampler",
    "partition": "partition.scheme",
    "alpha": "partition.alpha",
    "min_size": "partition.min_size",
    "shards_per_client": "partition.shards_per_client",
    "classes_per_client": "partition.classes_per_client",
    "download": "download",
    "clients": "strategy.clients",
    "rounds": "strategy.rounds",
}


@app.command()
def run(
    config: Path = typer.Option(None, "--config", "-c", help="YAML, TOML or JSON config file."),
    strategy: str = typer.Option(
        None, help="Strategy: centralized, allreduce, ddp, param-server, fedavg."
    ),
    dataset: str = typer.Option(None, help=_help("dataset")),
    model: str = typer.Option(None, help=_help("model")),
    workers: int = typer.Option(None, help=_help("workers")),
    epochs: int = typer.Option(None, help=_help("epochs")),
    batch_size: int = typer.Option(None, "--batch-size", help=_help("batch_size")),
    lr: float = typer.Option(None, help=_help("optimizer.lr")),
    optimizer: str = typer.Option(None, help=_help("optimizer.name")),
    seed: int = typer.Option(None, help=_help("seed")),
    device: str = typer.Option(None, help=_help("device")),
    sampler: str = typer.Option(None, help=_help("sampler")),
    partition: str = typer.Option(
        None, help="Partition scheme: iid, dirichlet, shards, classes, quantity."
    ),
    alpha: float = typer.Option(None, help=_help("partition.alpha")),
    min_size: int = typer.Option(None, "--min-size", help=_help("partition.min_size")),
    shards_per_client: int = typer.Option(None, help=_help("partition.shards_per_client")),
    classes_per_client: int = typer.Option(None, help=_help("partition.classes_per_client")),
    data_dir: Path = typer.Option(None, help=_help("data_dir")),
    download: bool = typer.Option(None, "--download", help=_help("download")),
    clients: int = typer.Option(None, help=_help("strategy.clients")),
    rounds: int = typer.Option(None, help=_help("strategy.rounds")),
    out_dir: Path = typer.Option(None, help=_help("out_dir")),
    name: str = typer.Option(None, help=_help("name")),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    set_: list[str] = typer.Option(
        None, "--set", help="Override any config key: --set strategy.mode=async (repeatable)."
    ),
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
    from distlab.config import build_config

    flags = {FLAG_KEYS[k]: v for k, v in locals().items() if k in FLAG_KEYS}
    cfg = build_config(config, flags, set_ or [])
    progress = None if (quiet or as_json) else _progress()
    try:
        result = run_api(
            cfg, overwrite=overwrite, on_event=_progress_hook(progress) if progress else None
        )
    finally:
        if progress is not None and progress.live.is_started:
            progress.stop()
    if as_json:
        print(json.dumps(result.summary, indent=2))
    elif not quiet:
        print_summary(result.summary, result.run_dir)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


def _progress_hook(progress: Progress):
    task: dict[str, Any] = {}

    def on_event(event: dict[str, Any]) -> None:
        if event["kind"] == "phase" and "total" in event:
            # Started at the first event, not before: an error raised while the run is
            # checked then leaves stderr with its one line only.
            progress.start()
            task["id"] = progress.add_task(
                f"{event.get('unit', 'step')}s", total=event["total"], info=""
            )
        elif event["kind"] in ("step", "round") and "id" in task:
            progress.update(task["id"], advance=1, info=f"loss {event.get('loss') or 0:.4f}")
        elif event["kind"] == "eval" and "id" in task:
            progress.update(task["id"], info=f"acc {event['accuracy']:.4f}")

    return on_event


SUMMARY_ROWS = [
    ("status", "status"),
    ("strategy", "strategy"),
    ("dataset", "dataset"),
    ("model", "model"),
    ("params", "params"),
    ("workers", "workers"),
    ("processes", "processes"),
    ("final accuracy", "final_accuracy"),
    ("best accuracy", "best_accuracy"),
    ("final test loss", "final_loss"),
    ("steps", "steps"),
    ("rounds", "rounds"),
    ("wall seconds", "wall_seconds"),
    ("train seconds", "train_seconds"),
    ("samples/s", "samples_per_second"),
    ("bytes/step measured", "bytes_per_step_measured"),
    ("bytes/step analytic", "bytes_per_step_analytic"),
    ("bytes/round logical", "bytes_per_round_logical"),
    ("bytes/round measured", "bytes_per_round_measured"),
    ("peak RSS MB", "peak_rss_mb"),
]


def print_summary(summary: dict[str, Any], run_dir: Path | None = None) -> None:
    table = Table(title="run summary", show_header=False)
    table.add_column("measure", style="bold")
    table.add_column("value", justify="right")
    for label, key in SUMMARY_ROWS:
        value = summary.get(key)
        if value in (None, 0) and key in ("rounds", "steps", "bytes_per_step_measured"):
            continue
        if value is not None:
            table.add_row(label, f"{value:.4f}" if isinstance(value, float) else str(value))
    out.print(table)
    if run_dir is not None:
        out.print(f"run directory: {run_dir}", soft_wrap=True)


@app.command()
def show(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json."),
) -> None:
    """Print a finished run's summary."""
    from distlab.api import load_run

    result = load_run(run_dir)
    if as_json:
        print(json.dumps(result.summary, indent=2))
    else:
        print_summary(result.summary, run_dir)


@app.command()
def datasets(
    data_dir: Path = typer.Option(None, help=_help("data_dir")),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the datasets, with shapes and sizes where their files are present."""
    from distlab.data.datasets import DATASETS, load_dataset

    rows = []
    for name, spec in DATASETS.items():
        row = {"name": name, "description": spec.description}
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
        rows.append(row)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("name", "shape", "classes", "train", "test", "description")
    for r in rows:
        table.add_row(
            r["name"],
            str(tuple(r.get("shape", ()))) if "shape" in r else "-",
            str(r.get("classes", "-")),
            str(r.get("train", "-")),
            str(r.get("test", "-")),
            r.get("missing", r["description"]),
        )
    out.print(table)


@app.command("partition")
def partition_data(
    dataset: str = typer.Option("mnist-sample", help=_help("dataset")),
    clients: int = typer.Option(10, help="Number of clients (parts); >= 1."),
    scheme: str = typer.Option(
        "iid", help="Partition scheme: iid, dirichlet, shards, classes, quantity."
    ),
    alpha: float = typer.Option(None, help=_help("partition.alpha")),
    min_size: int = typer.Option(None, "--min-size", help=_help("partition.min_size")),
    balance: bool = typer.Option(None, "--balance/--no-balance", help=_help("partition.balance")),
    shards_per_client: int = typer.Option(None, help=_help("partition.shards_per_client")),
    classes_per_client: int = typer.Option(None, help=_help("partition.classes_per_client")),
    seed: int = typer.Option(0, help=_help("seed")),
    data_dir: Path = typer.Option(None, help=_help("data_dir")),
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
    from distlab.report import check_plot, plot_partition

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
    from distlab.report import partition_table_rows

    table = Table("client", "size", "classes", "top classes", title=title)
    for row in partition_table_rows(part):
        table.add_row(str(row["client"]), str(row["size"]), str(row["classes"]), row["top"])
    out.print(table)
    out.print(
        f"sizes min {metrics['size_min']} / median {metrics['size_median']:g} / max "
        f"{metrics['size_max']}; mean TV distance to the global class mix "
        f"{metrics['tv_distance']:.3f} (0 = IID)"
    )


@app.command()
def strategies(
    name: str = typer.Argument(None, help="One strategy; all when left out."),
) -> None:
    """List the strategies and every strategy.* key each one takes, with its meaning.

    Example: distlab strategies fedavg
    """
    from distlab.strategies import STRATEGIES, params_for

    names = [name] if name else list(STRATEGIES)
    for each in names:
        params = params_for(each)
        table = Table("key", "default", "meaning", title=f"{each}: {params.__doc__}")
        for key, field in params.model_fields.items():
            if key != "name":
                table.add_row(f"strategy.{key}", repr(field.default), field.description or "")
        out.print(table)


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories to compare."),
    out: Path = typer.Option(Path("report"), "--out", "-o", help="Directory for the report."),
    target: float = typer.Option(None, help="Report seconds to reach this test accuracy."),
) -> None:
    """Compare runs: curves.png (loss and accuracy over steps and seconds), bytes.png, and a
    table with speedup T(1)/T(N) and efficiency against the one-process run of the set.

    Example: distlab report runs/centralized runs/allreduce --out report --target 0.9
    """
    from distlab.report import write_report

    if target is not None and not 0 < target <= 1:
        raise ValueError(f"--target must be in (0, 1] (got {target})")
    rows = write_report(run_dirs, out, target)
    table = Table(*rows[0].keys(), title=f"report written to {out}")
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row.values()))
    Console(width=max(200, out.width)).print(table)


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage and config errors print one line and exit 2, never a traceback."""
    from distlab.runtime.launch import RunFailed, RunInterrupted

    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else list(argv)
    # With no arguments show the full help (exit 0), not a usage error squeezed into one line.
    try:
        code = command.main(args=args or ["--help"], prog_name="distlab", standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt, RunInterrupted) as exc:
        _fail(str(exc) or "interrupted", 130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except ValueError as exc:
        _fail(str(exc), 2)
    except RunFailed as exc:
        _fail(f"run failed: {exc}", 1)
    except Exception as exc:
        if not _is_usage_error(exc):
            raise
        _fail(_usage_message(exc), 2)
    # Shutdown would spend about half a second collecting torch's objects one by one; frozen,
    # they are left to the OS (every file is closed by now).
    gc.freeze()
    sys.exit(code if isinstance(code, int) else 0)


def _is_usage_error(exc: Exception) -> bool:
    # typer vendors click in newer releases; match its usage errors by shape, not by import.
    return hasattr(exc, "format_message") and getattr(exc, "exit_code", None) == 2


def _usage_message(exc: Exception) -> str:
    # typer checks option types with pydantic, and its message leaves out the bad value.
    cause = exc.__cause__
    errors = cause.errors() if hasattr(cause, "errors") else []
    if errors and "input" in errors[0]:
        return f"{exc.format_message()} (got {errors[0]['input']!r})"
    return exc.format_message()


def _fail(message: str, code: int) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
