"""The `distlab` command. The only module that reads argv; every error becomes one line.

distlab run                                   # centralized LeNet on the embedded MNIST sample
distlab run --strategy allreduce --workers 4  # 4 local processes, gloo
torchrun --nproc-per-node 4 -m distlab run --strategy allreduce --workers 4
"""

from __future__ import annotations

import copy
import gc
import inspect
import json
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# The help is plain click text (rich_markup_mode=None), but typer 0.20 still escapes the
# "[default: ...]" brackets for rich, printing "\[default: ...]"; without rich it does not.
typer.core.HAS_RICH = False

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Run one model on one dataset under every distributed and federated paradigm.",
)


def _console(**options: Any) -> Console:
    """A rich Console that writes colour and cursor codes only to a terminal. mpirun (and
    srun --pty) hands each rank a pseudo-terminal of its own whatever the launcher's output
    is (a file, a pipe), so under them the output is plain unless FORCE_COLOR or
    TTY_COMPATIBLE=1 asks for codes; NO_COLOR drops colour everywhere (rich reads it)."""
    from distlab.runtime.environ import LAUNCHER_KEYS

    forwarded = any(keys[0] in os.environ for keys in LAUNCHER_KEYS if keys[0] != "RANK")
    asked = os.environ.get("FORCE_COLOR") or os.environ.get("TTY_COMPATIBLE") == "1"
    if forwarded and not asked:
        options.setdefault("force_terminal", False)
    return Console(**options)


err = _console(stderr=True)
out = _console()


def _print_version(value: bool) -> None:
    if value:
        from distlab import __version__

        print(f"distlab {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Run one model on one dataset under every distributed and federated paradigm."""


# A flag's help is its config key's docstring, read from the config schema, which takes
# every strategy's parameters and so imports every strategy module (and torch). A command
# that does not print its help needs none of it, so the help holds this mark and the key
# until `main` sees --help.
_LAZY = "\x00config:"


def _help(path: str, default: str | None = None) -> str:
    """The help of the flag that sets config key `path`, filled in when help is printed;
    `default` replaces the config's default where a command starts from another one."""
    return _LAZY + path + ("" if default is None else "\x00" + default)


def _resolve_help(command) -> None:
    """Fill in the config keys' help texts and the run epilog of a click command tree."""
    for param in command.params:
        help_text = getattr(param, "help", None)
        if isinstance(help_text, str) and help_text.startswith(_LAZY):
            path, _, default = help_text[len(_LAZY) :].partition("\x00")
            param.help = _config_help(path, default or None)
    if command.epilog == _LAZY:
        command.epilog = _unflagged_keys()
    for sub in getattr(command, "commands", {}).values():
        _resolve_help(sub)


def _config_help(path: str, shown: str | None = None) -> str:
    """A config field's docstring, which is also its --help text, and its default (or
    `shown`, the default of a command that starts from another config)."""
    from distlab.config import config_field

    field = config_field(path)
    if field is None:
        return ""
    text = field.description or ""
    default = field.default if shown is None else shown
    if isinstance(default, str | int | float | bool | Path):
        return f"{text} [default: {_plain(default)}]"
    return text


def _names(registry: str) -> str:
    """The names a choice flag takes, read from its registry so help never drifts."""
    from distlab.data.partition import PARTITION_SCHEMES
    from distlab.strategies import STRATEGIES

    return ", ".join(STRATEGIES if registry == "strategy" else PARTITION_SCHEMES)


def _plain(value: Any) -> str:
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _unflagged_keys() -> str:
    """The run epilog: config keys that have no flag of their own, with their defaults."""
    from distlab.config import FLAG_KEYS, NESTED, RunConfig, config_field
    from distlab.data.partition import PARTITION_SCHEMES

    keys = [k for k in RunConfig.model_fields if k not in NESTED and k != "partition"]
    keys += [f"{s}.{k}" for s, model in NESTED.items() for k in model.model_fields]
    keys += [f"partition.{k}" for m in PARTITION_SCHEMES.values() for k in m.model_fields]
    flagged = set(FLAG_KEYS.values()) | {"strategy"}
    lines = []
    for key in dict.fromkeys(keys):
        if key not in flagged:
            default = config_field(key).default
            shown = _plain(default) if not isinstance(default, BaseModel) else "-"
            lines.append(f"{key}={shown}")
    return (
        "Keys without a flag (set them with --set KEY=VALUE; defaults shown): "
        + ", ".join(lines)
        + ". The strategy.* keys: distlab strategies [NAME]."
    )


@app.command(epilog=_LAZY)
def run(
    config: Path = typer.Option(None, "--config", "-c", help="YAML, TOML or JSON config file."),
    strategy: str = typer.Option(
        None, help=f"Strategy: {_names('strategy')}. [default: centralized]"
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
        None, help=f"Partition scheme: {_names('partition')}. [default: iid]"
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
    tensorboard: bool = typer.Option(None, "--tensorboard", help=_help("tensorboard")),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    resume: Path = typer.Option(
        None,
        "--resume",
        help="Continue this run directory's stopped run from its newest checkpoint, with "
        "its own config (other flags may change only where and how fast it runs).",
    ),
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
    from distlab.config import FLAG_KEYS, build_config
    from distlab.runtime.launch import is_follower

    warnings.showwarning = _warning_line
    flags = {FLAG_KEYS[k]: v for k, v in locals().items() if k in FLAG_KEYS}
    cfg = (
        build_config(config, flags, set_ or [])
        if resume is None
        else resumed_config(resume, config, flags, set_ or [])
    )
    # Under torchrun, mpirun or Slurm every rank runs this command; rank 0 speaks for the run.
    follower = is_follower()
    progress = None if (quiet or as_json or follower) else _progress()
    try:
        result = run_api(
            cfg,
            overwrite=overwrite,
            on_event=_progress_hook(progress) if progress else None,
            started=command_started(),
            resume=resume,
        )
    finally:
        if progress is not None and progress.live.is_started:
            progress.stop()
    if follower:
        return
    if as_json:
        print(json.dumps(result.summary, indent=2))
    elif not quiet:
        print_summary(result.summary, result.run_dir)


def resumed_config(run_dir: Path, file: Path | None, flags: dict, overrides: list[str]):
    """The config of a run to resume: its own, with what the flags change (the API refuses
    a change that matters); None when no flag is given, so the run's own is used. A fault
    that fired is left out unless the flags give fault.* again."""
    from distlab.config import build_data, validate_config
    from distlab.resume import without_fired_fault
    from distlab.runs.directory import read_json

    if file is None and not overrides and all(v is None for v in flags.values()):
        return None
    if not (run_dir / "config.json").is_file():
        raise ValueError(f"--resume: {str(run_dir)!r} is not a run directory (no config.json)")
    own = read_json(run_dir / "config.json")
    cfg = validate_config(build_data(file, flags, overrides, start=own))
    given = build_data(file, flags, overrides)
    return cfg if "fault" in given else without_fired_fault(run_dir, cfg)


# The run flags that set a config (all but where the run directory goes): a sweep's base
# config takes the same flags.
SWEEP_OWN_FLAGS = ("name", "out_dir")


def with_config_flags(
    fn=None, *, skip: tuple[str, ...] = SWEEP_OWN_FLAGS, defaults: dict[str, str] | None = None
):
    """Give a command the run command's config flags (--config, --strategy ... --set), so
    every flag of `distlab run` sets the base config of a sweep. The command takes them as
    **config_flags. `skip` leaves out flags the command has its own meaning for (a sweep
    names its cells itself; a deployed run takes --name and --out-dir as `run` does);
    `defaults` (flag -> value) are the defaults the command applies instead of run's, which
    its help then shows."""
    if fn is None:
        return lambda f: with_config_flags(f, skip=skip, defaults=defaults)
    from distlab.config import FLAG_KEYS

    shared = [
        _with_default(p, (defaults or {}).get(n))
        for n, p in inspect.signature(run, eval_str=True).parameters.items()
        if (n in FLAG_KEYS and n not in skip) or n in ("config", "set_")
    ]
    own = [
        p
        for p in inspect.signature(fn, eval_str=True).parameters.values()
        if p.kind is not p.VAR_KEYWORD
    ]
    fn.__signature__ = inspect.Signature(own + shared)
    fn.__annotations__ = {p.name: p.annotation for p in own + shared}
    return fn


def _with_default(param: inspect.Parameter, default: str | None) -> inspect.Parameter:
    """`param` (a flag of `run`) whose help shows `default`; unchanged for None."""
    if default is None:
        return param
    option = copy.copy(param.default)
    if option.help.startswith(_LAZY):
        option.help = _help(option.help[len(_LAZY) :].partition("\x00")[0], default)
    else:
        option.help = re.sub(r"\[default: [^\]]*\]", f"[default: {default}]", option.help)
    return param.replace(default=option)


def base_config(config_flags: dict[str, Any], start: dict[str, Any] | None = None) -> dict:
    """The unvalidated config a sweep starts from: a sweep file's base, then --config, then
    the flags, then --set."""
    from distlab.config import FLAG_KEYS, build_data

    flags = {FLAG_KEYS[k]: v for k, v in config_flags.items() if k in FLAG_KEYS}
    return build_data(config_flags.get("config"), flags, config_flags.get("set_") or [], start)


def command_started() -> float:
    """When this command was launched (its process's start, or its exec: environ.launched),
    so that wall and start-up seconds include the interpreter and import time a user waits
    through."""
    from distlab.runtime.environ import launched

    return launched()


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings from the run (more processes than cores) as one plain line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


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
    """Drive the progress display from the run's events: a status line while processes
    start (status events), then a bar over steps or rounds."""
    task: dict[str, Any] = {}

    def on_event(event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind == "status" and "id" not in task:
            _show_status(progress, task, event["text"])
        elif kind == "phase" and "total" in event and "id" not in task:
            _show_status(progress, task, None)
            progress.start()
            task["id"] = progress.add_task(
                f"{event.get('unit', 'step')}s", total=event["total"], info=""
            )
        elif kind in ("step", "round") and "id" in task:
            loss = event.get("loss")
            progress.update(task["id"], advance=1, info="" if loss is None else f"loss {loss:.4f}")
        elif kind == "eval" and "id" in task:
            progress.update(task["id"], info=f"acc {event['accuracy']:.4f}")

    return on_event


def _show_status(progress: Progress, task: dict[str, Any], text: str | None) -> None:
    """One transient spinner line saying what the run is doing before training starts."""
    if "status" in task:
        task["status"].stop()
        del task["status"]
    if text is not None:
        task["status"] = err.status(text + " ...")
        task["status"].start()


# Counts that are 0 only because the strategy does not have them (a fedavg run has no steps).
HIDDEN_WHEN_ZERO = ("rounds", "steps")


def print_summary(summary: dict[str, Any], run_dir: Path | None = None) -> None:
    table = Table(title="run summary", show_header=False)
    table.add_column("measure", style="bold")
    table.add_column("value", justify="right")
    from distlab.api import summary_rows

    for label, key in summary_rows(summary.get("strategy")):
        value = summary.get(key)
        if value is None or (value == 0 and key in HIDDEN_WHEN_ZERO):
            continue
        table.add_row(label, format_number(value))
    threads = (summary.get("environment") or {}).get("threads_per_process")
    if threads is not None:
        table.add_row("threads/process", str(threads))
    out.print(table)
    if summary.get("error"):
        out.print(f"cause: {summary['error']}", soft_wrap=True)
    if run_dir is not None:
        out.print(f"run directory: {run_dir}", soft_wrap=True)


def format_number(value: Any) -> str:
    """Four significant decimals for fractions, no trailing zeros: 0.917, 2.3, 1,421,696."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or (value.is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    if value and abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:.4f}".rstrip("0").rstrip(".")


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


@app.command("partition")
def partition_data(
    dataset: str = typer.Option("mnist-sample", help=_help("dataset")),
    clients: int = typer.Option(10, help="Number of clients (parts); >= 1."),
    scheme: str = typer.Option("iid", help=f"Partition scheme: {_names('partition')}."),
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
        keys = {k: f for k, f in params.model_fields.items() if k != "name"}
        if not keys:
            out.print(f"{each}: {params.__doc__} No strategy.* keys.", soft_wrap=True)
            continue
        table = Table("key", "default", "meaning", title=f"{each}: {params.__doc__}")
        for key, field in keys.items():
            table.add_row(f"strategy.{key}", repr(field.default), field.description or "")
        out.print(table)


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run or sweep directories to compare."),
    # Named out_dir, not out: `out` is the module's stdout console, used below.
    out_dir: Path = typer.Option(
        Path("report"), "--out", "-o", help="Directory for the report (created if missing)."
    ),
    target: float = typer.Option(None, help="Report seconds to reach this test accuracy."),
    network: str = typer.Option(
        None,
        help="Also predict speedup on these networks with the alpha-beta model, e.g. "
        "1gbit,10gbit,100mbit (whatif.png).",
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
    from distlab.experiments.report import CONSOLE_COLUMNS, write_report
    from distlab.experiments.whatif import parse_latency

    parse_latency(latency)  # a bad --latency is refused even where no --network uses it
    # write_report checks every input and run directory before writing anything.
    rows = write_report(run_dirs, out_dir, target, network, latency, force, baseline)
    title = f"report written to {out_dir} (report.html; every column in results.csv)"
    table = Table(*CONSOLE_COLUMNS.values(), title=title)
    for row in rows:
        table.add_row(*("-" if row[k] is None else format_number(row[k]) for k in CONSOLE_COLUMNS))
    console = _console(width=max(200, out.width))
    console.print(table)
    _print_repeats(console, out_dir / "repeats.json")
    for row in rows:
        for note in (row["speedup_note"], row["flags"]):
            if note:
                console.print(f"{row['run']}: {note}", soft_wrap=True)


def _print_repeats(console: Console, path: Path) -> None:
    """The report's repeats table, when some config ran more than once."""
    from rich.markup import escape

    from distlab.experiments.page import REPEAT_COLUMNS, REPEATS_TITLE, cell

    if not path.is_file():
        return
    table = Table(*REPEAT_COLUMNS, title=escape(REPEATS_TITLE))
    for group in json.loads(path.read_text()):
        table.add_row(*(escape(cell(group.get(k))) for k in REPEAT_COLUMNS))
    console.print(table)


# What `distlab compare` runs unless --strategies says otherwise: seed 000's homework.
COMPARE_CELLS = [
    {"strategy": "centralized", "workers": 1},
    {"strategy": "allreduce"},
    {"strategy": "param-server"},
    {"strategy": "fedavg", "partition": "iid"},
    {"strategy": "fedavg", "partition": "dirichlet", "alpha": 0.1},
]


COMPARE_WORKERS = 2


@app.command(epilog="Every flag of `distlab run` (see distlab run --help) sets the config.")
@with_config_flags
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
    **config_flags: Any,
) -> None:
    """One config under several strategies: a sweep, then its report in OUT_DIR/NAME/report.
    --workers defaults to 2 here (a strategy needs peers to compare). Every run gets the
    same torch threads per process, so the speedups compare like with like; with
    --repeats 3 the report gives each figure's median and min-max.

    Example: distlab compare --epochs 1 --workers 4
    """
    from distlab.experiments.report import check_baseline, check_out_dir, check_target
    from distlab.experiments.sweep import canonical_key, raise_for_failures

    if strategies is not None:
        names = [s.strip() for s in strategies.split(",") if s.strip()]
        if not names:
            raise ValueError("--strategies has no names (e.g. --strategies allreduce,fedavg)")
        # The baseline runs once, as one process: the T(1) of every speedup.
        cells = [{"strategy": baseline, "workers": 1}]
        cells += [{"strategy": n} for n in names if n != baseline]
    else:
        cells = COMPARE_CELLS
    check_target(target)
    check_baseline(baseline)
    check_out_dir(out_dir / name / "report")
    from distlab.experiments.whatif import parse_latency

    parse_latency(latency)  # refused even where no --network uses it
    if network is not None:
        from distlab.experiments.report import check_network

        check_network(network, latency)
    spec = {"cells": [{canonical_key(k, "cells"): v for k, v in c.items()} for c in cells]}
    base = base_config(config_flags)
    base.setdefault("workers", COMPARE_WORKERS)
    spec["repeats"] = repeats
    plan, results = _run_sweep(base, grid, spec, name, out_dir, jobs, False, overwrite)
    if any(r.status == "completed" for r in results):
        report([plan.root], plan.root / "report", target, network, latency, False, baseline)
    raise_for_failures(plan, results)


@app.command(epilog="Every flag of `distlab run` (see distlab run --help) sets the base config.")
@with_config_flags
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
    repeats: int = typer.Option(
        None,
        help="Run each cell this many times, interleaved (CELL_r1, CELL_r2, ...); the report "
        "gives the median and min-max. [default: the file's repeats, else 1]",
    ),
    **config_flags: Any,
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
    base = base_config(config_flags, spec.get("base"))
    name = name or spec.get("name") or (file.stem if file else None)
    done = _run_sweep(base, grid, spec, name, out_dir, jobs, dry_run, overwrite)
    if done is not None:
        raise_for_failures(*done)


def _run_sweep(base, grid, spec, name, out_dir, jobs, dry_run, overwrite):
    """Plan (every cell validated), then run with a progress line per cell; returns the plan
    and the results, or None for a dry run."""
    from distlab.experiments.sweep import plan_sweep, run_sweep

    plan = plan_sweep(base, grid, spec, name, out_dir, jobs)
    if dry_run:
        table = Table("cell", "processes", "settings", title=f"sweep {plan.name}: {plan.root}")
        for cell in plan.cells:
            settings = ", ".join(f"{k}={_plain(v)}" for k, v in cell.values.items())
            table.add_row(cell.name, str(cell.processes), settings or "(base config)")
        out.print(table)
        return None
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    with progress:
        results = run_sweep(plan, jobs, overwrite, _cell_display(progress, plan))
    print_cells(plan, results)
    return plan, results


def _cell_display(progress: Progress, plan):
    overall = progress.add_task(f"sweep {plan.name}", total=len(plan.cells))
    lines: dict[str, Any] = {}

    def on_cell(kind: str, cell, result) -> None:
        if kind == "start":
            lines[cell.name] = progress.add_task(f"  {cell.name}", total=None)
            return
        if cell.name in lines:
            progress.remove_task(lines.pop(cell.name))
        progress.advance(overall)
        progress.console.print(_cell_line(kind, cell, result), soft_wrap=True, highlight=False)

    return on_cell


def _cell_line(kind: str, cell, result) -> str:
    if kind == "skip":
        return f"finished before: {cell.name}"
    if result.status != "completed":
        return f"{result.status}: {cell.name}: {result.error or 'no cause recorded'}"
    acc = result.summary.get("final_accuracy")
    shown = "-" if acc is None else format_number(acc)
    return f"completed: {cell.name}  accuracy {shown}  {format_number(result.seconds)} s"


def print_cells(plan, results) -> None:
    table = Table("cell", "status", "final acc", "train s", "note", title=f"sweep {plan.name}")
    for r in results:
        acc, train = r.summary.get("final_accuracy"), r.summary.get("train_seconds")
        note = "finished before" if r.skipped else (r.error or "")
        table.add_row(
            r.cell.name,
            r.status,
            "-" if acc is None else format_number(acc),
            "-" if train is None else format_number(train),
            note,
        )
    _console(width=max(160, out.width)).print(table)
    out.print(f"sweep directory: {plan.root}  (distlab report {plan.root})", soft_wrap=True)


@app.command("tune-sklearn")
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
    done = sk.tune_sklearn(plan, table, out_dir, address, nodes, default)
    _print_tuned(done)


def _print_tuned(done) -> None:
    from distlab.experiments.tune.sklearn import METRIC

    table = Table("configuration", "cv accuracy", "cv std", "test accuracy")
    if done.best is not None:
        shown = ", ".join(f"{k}={_param(v)}" for k, v in done.best["params"].items())
        table.add_row(f"best: {shown}", *(format_number(done.best[k]) for k in
                      (METRIC, "cv_std", "test_accuracy")))  # fmt: skip
    if done.default is not None:
        table.add_row("default", *(format_number(done.default[k]) for k in
                      (METRIC, "cv_std", "test_accuracy")))  # fmt: skip
    failed = sum(r["status"] != "completed" for r in done.rows)
    out.print(table)
    if done.scaling:
        grid = Table("nodes", "wall s", "speedup", "efficiency", title="scaling")
        for r in done.scaling:
            grid.add_row(*(format_number(round(r[k], 3)) for k in grid_keys()))
        out.print(grid)
    note = f" ({failed} trials failed)" if failed else ""
    out.print(f"{len(done.rows)} trials{note}; results in {done.out}", soft_wrap=True)


def _param(value: Any) -> str:
    return format_number(value) if isinstance(value, float) else _plain(value)


def grid_keys() -> tuple[str, ...]:
    return ("nodes", "seconds", "speedup", "efficiency")


@app.command(
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
    trials: int = typer.Option(
        None,
        help="Trials to run; for grid search a multiple of the grid (each pass samples the "
        "other keys afresh). [default: the grid once, or 10 without grid keys]",
    ),
    search: str = typer.Option(
        "grid",
        help="grid (Tune's variant generator), random (grid keys sampled too) or optuna "
        "(needs: pip install 'distlab[optuna]').",
    ),
    scheduler: str = typer.Option(
        "fifo",
        help="fifo (every trial runs to its end) or asha (stops the worse trials at their "
        "evals 2, 4, 8, ...).",
    ),
    metric: str = typer.Option(
        "accuracy", help="accuracy or loss: each eval's test value, the run's final one at its end."
    ),
    mode: str = typer.Option(None, help="max or min. [default: max for accuracy, min for loss]"),
    max_concurrent: int = typer.Option(
        None, "--max-concurrent", help="Trials at once. [default: as many as the CPUs hold]"
    ),
    out_dir: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Search directory: results.csv, results.md, best.yaml, "
        "metric.png, trials/ and Ray's state. [default: tune/NAME, NAME the config's name or the "
        "space file's]",
    ),
    address: str = typer.Option(
        None,
        help="HOST:PORT of a running Ray head (ray start --head). [default: a local Ray "
        "with this machine's cores]",
    ),
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
    from distlab.config import build_data
    from distlab.experiments.tune.runs import check_where, plan_from_record, plan_tune, run_tune
    from distlab.experiments.tune.space import read_space

    if resume and config is None and space is None and out_dir is not None:
        plan = plan_from_record(out_dir)
    else:
        if space is None:
            raise ValueError("--space is required (a file of KEY: {grid: [...]} and the like)")
        base = build_data(config)
        out_dir = out_dir or Path("tune") / (base.get("name") or space.stem)
        base.pop("name", None)
        plan = plan_tune(base, read_space(space), out_dir, trials, search, scheduler, metric,
                         mode, max_concurrent)  # fmt: skip
    check_where(plan, address, resume)
    where = f"the Ray cluster at {address}" if address else "a local Ray"
    err.print(f"{plan.trials} trials, up to {plan.cpus} CPUs each, on {where}; {plan.out}")
    done = run_tune(plan, address, resume, _trial_line(plan))
    _print_best(done)


def _trial_line(plan):
    def on_trial(kind: str, trial: str, result: dict[str, Any]) -> None:
        value = result.get(plan.metric)
        shown = "" if value is None else f"  {plan.metric} {format_number(value)}"
        evals = result.get("training_iteration") or 0
        err.print(f"{kind}: {trial}{shown}  ({evals} evals)", soft_wrap=True, highlight=False)

    return on_trial


def _print_best(done) -> None:
    from distlab.experiments.tune.runs import ranked

    plan = done.plan
    table = Table("trial", plan.metric, "evals", "seconds", *plan.space, title="best trials")
    for row in ranked(done):
        values = (row.value, row.iterations, row.seconds, *row.params.values())
        table.add_row(row.trial, *("-" if v is None else format_number(v) for v in values))
    _console(width=max(160, out.width)).print(table)
    counts = {s: sum(r.status == s for r in done.rows) for s in ("completed", "stopped", "failed")}
    said = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    out.print(f"{len(done.rows)} trials ({said}); results in {plan.out}", soft_wrap=True)
    out.print(f"best: distlab run --config {plan.out / 'best.yaml'}", soft_wrap=True)


def command_group(name: str, help: str) -> typer.Typer:
    """A `distlab NAME SUBCOMMAND` group, with plain help like the top level's."""
    group = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help=help)
    app.add_typer(group, name=name)
    return group


deploy_app = command_group(
    "deploy",
    "Federated learning on Flower's deployment engine: a server and clients that are "
    "separate programs, on one machine or many (TLS and node authentication on).",
)

DEPLOY_EPILOG = "Every flag of `distlab run` (see distlab run --help) sets the config."
# What a deployed run starts from where the flags say nothing (deploy_data, deploy_local).
DEPLOY_STRATEGY = "fedavg"
DEPLOY_LOCAL_CLIENTS = 3


@deploy_app.command("certs")
def deploy_certs(
    out: Path = typer.Option(..., "--out", help="Directory for the CA, server and node keys."),
    server_names: str = typer.Option(
        "localhost,127.0.0.1",
        "--server-names",
        help="The server's host names and IP addresses, comma-separated (its certificate's "
        "subject alternative names): every name clients will use in --server.",
    ),
    clients: int = typer.Option(3, help="Node key pairs to make (client-0 ... client-N-1)."),
    force: bool = typer.Option(False, help="Replace existing material in --out."),
) -> None:
    """Make a CA, a server certificate and one key pair per client.

    Example: distlab deploy certs --out certs --server-names server.lan,10.0.0.5 --clients 2

    Keep ca.key and server.key on the server; copy ca.pem and client-I.key to client I.
    """
    from distlab.deploy.certs import make_certs, parse_server_names

    paths = make_certs(out, parse_server_names(server_names), clients, force)
    out_line = f"wrote {paths.root}: ca.pem, server.pem/.key, client-0..{clients - 1}.key/.pub"
    print(out_line)


@deploy_app.command("server", epilog=DEPLOY_EPILOG)
@with_config_flags(skip=(), defaults={"strategy": DEPLOY_STRATEGY})
def deploy_server(
    certs: Path = typer.Option(None, help="Directory from distlab deploy certs (TLS)."),
    keys: list[Path] = typer.Option(
        None, "--keys", help="Node public keys to register [default: CERTS/client-*.pub]."
    ),
    host: str = typer.Option("0.0.0.0", help="Address of the Fleet API (clients connect)."),
    port: int = typer.Option(9092, help="Port of the Fleet API."),
    control_port: int = typer.Option(9093, help="Port of the Control API (127.0.0.1 only)."),
    serverappio_port: int = typer.Option(
        9091, help="Port of the ServerAppIo API (127.0.0.1 only)."
    ),
    insecure: bool = typer.Option(False, help="No TLS and no node authentication (unsafe)."),
    connect_timeout: float = typer.Option(300, help="Seconds to wait for every client."),
    round_timeout: float = typer.Option(180, help="Seconds to wait for a round's replies."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    resume: Path = typer.Option(
        None, "--resume", help="Go on with this deployed run from its newest checkpoint."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json to stdout."),
    **config_flags: Any,
) -> None:
    """Start a SuperLink and run a federated config on the clients that join it.

    Example: distlab deploy server --certs certs --clients 2 --rounds 5

    Each client runs: distlab deploy client --server HOST:9092 --ca ca.pem --key
    client-I.key --partition-id I --num-partitions 2
    """
    from distlab.deploy.server import ServerOptions, prepare, serve

    _check_timeouts(connect_timeout, round_timeout)
    options = ServerOptions(
        certs, list(keys or []), host, port, control_port, serverappio_port, insecure,
        not insecure, connect_timeout, round_timeout,
    )  # fmt: skip
    data = deploy_data(config_flags, resume)
    if insecure:
        _loud_warning()
    prepared = prepare(data, options, overwrite, command_started(), resume)
    say = None if as_json else _say
    if say is not None:
        say(f"SuperLink on {host}:{port}; waiting for {prepared.cfg.strategy.clients} clients")
    result = serve(prepared, options, None, say)
    _print_result(result, as_json)


@deploy_app.command("client")
def deploy_client(
    server: str = typer.Option(..., help="The server's Fleet API, HOST:PORT."),
    partition_id: int = typer.Option(..., "--partition-id", help="This client's id, 0..K-1."),
    num_partitions: int = typer.Option(..., "--num-partitions", help="K, the server's clients."),
    key: Path = typer.Option(None, help="This node's private key (client-I.key)."),
    ca: Path = typer.Option(None, help="The server's CA certificate (ca.pem)."),
    insecure: bool = typer.Option(False, help="No TLS (only for a server started insecure)."),
    data_dir: Path = typer.Option(None, help="Read the dataset's files from here."),
    local_data: bool = typer.Option(
        False,
        help="Train on every training sample in --data-dir (this site's own data) "
        "instead of partition I of the shared dataset.",
    ),
    threads: int = typer.Option(1, help="torch threads of the client's training."),
    port: int = typer.Option(9094, help="Local port of the ClientAppIo API (127.0.0.1)."),
    join_timeout: float = typer.Option(60, help="Seconds to wait until the server accepts."),
    work_dir: Path = typer.Option(Path(".distlab-client"), help="Where the node's log goes."),
) -> None:
    """Start a SuperNode that trains one client of a deployed run.

    Example: distlab deploy client --server 10.0.0.5:9092 --ca ca.pem --key client-0.key
    --partition-id 0 --num-partitions 2
    """
    from distlab.deploy.client import ClientOptions, run_client

    if join_timeout <= 0:
        raise ValueError(f"--join-timeout must be > 0 (got {join_timeout})")
    options = ClientOptions(
        server, partition_id, num_partitions, key, ca, insecure, data_dir, local_data,
        threads, port, join_timeout, work_dir,
    )  # fmt: skip
    run_client(options, _say)


@deploy_app.command("local", epilog=DEPLOY_EPILOG)
@with_config_flags(
    skip=(), defaults={"strategy": DEPLOY_STRATEGY, "clients": str(DEPLOY_LOCAL_CLIENTS)}
)
def deploy_local(
    insecure: bool = typer.Option(False, help="No TLS and no node authentication."),
    connect_timeout: float = typer.Option(120, help="Seconds to wait for every client."),
    round_timeout: float = typer.Option(180, help="Seconds to wait for a round's replies."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    resume: Path = typer.Option(
        None, "--resume", help="Go on with this deployed run from its newest checkpoint."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json to stdout."),
    **config_flags: Any,
) -> None:
    """A whole federation on this machine: certificates, a SuperLink and one SuperNode per
    client (--clients, default 3) over loopback, the run, and everything stopped at the end.

    Example: distlab deploy local --clients 3 --rounds 3 --out-dir runs --name flower
    """
    from distlab.deploy.local import run_local

    _check_timeouts(connect_timeout, round_timeout)
    data = deploy_data(config_flags, resume)
    strategy = (
        data["strategy"] if isinstance(data["strategy"], dict) else {"name": data["strategy"]}
    )
    strategy.setdefault("clients", DEPLOY_LOCAL_CLIENTS)
    data["strategy"] = strategy
    if insecure:
        _loud_warning()
    say = None if as_json else _say
    result = run_local(
        data, overwrite, command_started(), insecure, connect_timeout, round_timeout, say, resume
    )
    _print_result(result, as_json)


def deploy_data(config_flags: dict, resume: Path | None) -> dict:
    """A deployed run's config mapping: the flags' (fedavg unless they say otherwise), or,
    with --resume, the run's own with what the flags change."""
    from distlab.config import merge
    from distlab.runs.directory import read_json

    data = base_config(config_flags)
    if resume is None:
        data.setdefault("strategy", DEPLOY_STRATEGY)
        return data
    if not (resume / "config.json").is_file():
        raise ValueError(f"--resume: {str(resume)!r} is not a run directory (no config.json)")
    return merge(read_json(resume / "config.json"), data)


def _check_timeouts(connect: float, round_: float) -> None:
    for flag, value in (("--connect-timeout", connect), ("--round-timeout", round_)):
        if not value > 0:
            raise ValueError(f"{flag} must be > 0 (got {value})")


def _loud_warning() -> None:
    for line in (
        "WARNING: --insecure: no TLS and no node authentication. Anyone who can reach the",
        "WARNING: Fleet port can read the model and join as a client. Use only on a network",
        "WARNING: you trust, never on the internet.",
    ):
        print(line, file=sys.stderr)


def _say(text: str) -> None:
    print(text, flush=True)


def _print_result(result, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.summary, indent=2))
    else:
        print_summary(result.summary, result.run_dir)


@app.command()
def dashboard(
    runs_dir: Path = typer.Argument(
        Path("runs"), help="A folder of run directories (and sweeps of them)."
    ),
    host: str = typer.Option(
        "127.0.0.1",
        help="Address to listen on. Any address but loopback needs the token (see --token).",
    ),
    port: int = typer.Option(8050, help="Port to listen on."),
    token: str = typer.Option(
        None,
        help="Secret every request must carry (?token=, Authorization: Bearer, or the page's "
        "cookie). [default: none on loopback, else a random one, printed in the URL]",
    ),
) -> None:
    """Watch runs live in the browser: the run list with each run's status, and for the run
    you open its loss and accuracy curves; for federated runs the clients, each round's
    sampled and failed clients, client training times, validation accuracy per round and
    where a round's time went; for data-parallel runs step time and bytes per rank. It only
    reads RUNS_DIR. Stop it with Ctrl-C. On an address other than loopback it prints the
    URL with its token; see docs/dashboard.md for an SSH tunnel instead.

    Examples:

      distlab dashboard runs

      distlab dashboard sweeps/scale --port 8051

      distlab dashboard runs --host 0.0.0.0
    """
    try:
        from distlab.dashboard.app import serve
    except ModuleNotFoundError as exc:
        raise ValueError(
            f"distlab dashboard needs {exc.name}: pip install 'distlab[dashboard]'"
        ) from None

    serve(runs_dir, host, port, token, announce=lambda url: print(f"dashboard: {url}", flush=True))


edge_app = command_group(
    "edge",
    "Arduino Unos that train logistic regression over a serial line: real boards on USB, "
    "or the same firmware on simavr behind a pty (see docs/edge.md).",
)

EDGE_BAUD_HELP = "Line speed: 9600, 19200, 38400, 57600 or 115200 (the firmware's, see make BAUD=)."


@edge_app.command("build")
def edge_build(baud: int = typer.Option(115200, help=EDGE_BAUD_HELP)) -> None:
    """Build the edge_lr firmware (firmware/build/edge_lr.hex, to flash an Uno) and the
    simulator runner, and print the firmware's flash and RAM use.

    Example: distlab edge build && make -C firmware upload PORT=/dev/ttyACM0
    """
    from distlab.edge.board import check_baud
    from distlab.edge.toolchain import ToolchainError, build

    check_baud(baud)
    try:
        built = build(baud)
    except ToolchainError as exc:
        raise ValueError(f"distlab edge build: {exc}") from None
    print(f"firmware: {built.hex}")
    print(f"runner: {built.runner}")
    print(built.describe())


@edge_app.command("sim")
def edge_sim(
    boards: int = typer.Option(3, "--boards", help="Simulated boards to start."),
    baud: int = typer.Option(115200, help=EDGE_BAUD_HELP),
) -> None:
    """Start simulated boards (the firmware on simavr, one process and one pty each), print
    their ports, and keep them up until Ctrl-C; then print each board's simulated time and
    LED toggles. Any program can drive them: distlab edge train --port /dev/pts/N ...

    Example: distlab edge sim --boards 3
    """
    import signal
    import time

    from distlab.edge.board import check_baud
    from distlab.edge.sim import start_simulated_boards
    from distlab.edge.toolchain import ToolchainError, build

    check_baud(baud)
    if boards < 1:
        raise ValueError(f"--boards must be >= 1 (got {boards})")
    try:
        built = build(baud)
    except ToolchainError as exc:
        raise ValueError(f"distlab edge sim: {exc}") from None
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as Ctrl-C does
    with start_simulated_boards(boards, built.elf, built.runner) as sim:
        for index, port in enumerate(sim.ports):
            print(f"board {index}: {port}", flush=True)
        print(f"{boards} simulated boards at {baud} baud; Ctrl-C stops them", file=sys.stderr)
        try:
            while all(p.poll() is None for p in sim.processes):
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    for index, totals in enumerate(sim.totals):
        said = "gone" if totals is None else (
            f"{totals.simulated_seconds:.3f} s simulated, {totals.led_toggles} LED toggles, "
            f"{totals.bytes_in} bytes in, {totals.bytes_out} out"
        )  # fmt: skip
        print(f"board {index}: {said}", file=sys.stderr)


@edge_app.command("train")
def edge_train(
    sim: int = typer.Option(None, "--sim", help="Start this many simulated boards."),
    port: list[str] = typer.Option(
        None, "--port", help="A real board's serial port (repeat: one per board)."
    ),
    epochs: int = typer.Option(5, help="Passes over each board's shard."),
    lr: float = typer.Option(0.5, help="Learning rate (sent as float32)."),
    batch: int = typer.Option(16, help="Samples per update on a board."),
    components: int = typer.Option(8, help="PCA components: the features a board learns on."),
    data_dir: Path = typer.Option(
        None, help="A folder with Kaggle's Titanic train.csv [default: breast-cancer, embedded]"
    ),
    baud: int = typer.Option(115200, help=EDGE_BAUD_HELP),
    timeout: float = typer.Option(5.0, help="Seconds a board may stay silent."),
    seed: int = typer.Option(0, help="Seed of the train/test split."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON document."),
) -> None:
    """Seed 001's edge training: split the training set across the boards, train them all at
    once (a thread per board), average their weights by samples, and test every model; each
    board's weights are checked bit for bit against a float32 reference of its arithmetic.

    Examples:

      distlab edge train --sim 3 --epochs 2 --json

      distlab edge train --port /dev/ttyACM0 --port /dev/ttyACM1 --data-dir titanic
    """
    from distlab.edge.board import BoardError, check_baud
    from distlab.edge.coordinator import check_boards, check_hyper, run_edge
    from distlab.edge.data import load_edge_data
    from distlab.edge.sim import SimulatorError
    from distlab.edge.toolchain import ToolchainError

    check_baud(baud)
    check_boards(sim, port, components, timeout)
    hyper = check_hyper(epochs, lr, batch)
    data = load_edge_data(data_dir, components, seed)
    bars = _EdgeBars(quiet=as_json)
    try:
        with bars:
            result = run_edge(data, hyper, sim, port, baud, timeout, bars.advance, bars.add_boards)
    except ToolchainError as exc:
        raise ValueError(f"distlab edge train --sim: {exc}") from None
    except (BoardError, SimulatorError) as exc:
        if isinstance(exc, ValueError):
            raise
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _edge_table(result)


class _EdgeBars:
    """A progress bar per board on stderr, advanced from the boards' threads (none if quiet)."""

    def __init__(self, quiet: bool) -> None:
        self.progress = None if quiet else Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} batches"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )  # fmt: skip
        self.tasks: dict[int, Any] = {}

    def __enter__(self) -> _EdgeBars:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tasks:
            self.progress.stop()

    def add_boards(self, boards: list) -> None:
        """Called once every board has answered: nothing is drawn before (a bad port's
        error stays one line)."""
        if self.progress is None:
            return
        self.progress.start()
        for board in boards:
            self.tasks[board.board_id] = self.progress.add_task(board.name, total=None)

    def advance(self, board: int, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress.update(self.tasks[board], completed=done, total=total)


def _edge_table(result) -> None:
    h = result.hyper
    title = f"{result.dataset}, {result.features} features: {h.epochs} epochs, lr {h.lr}, batch "
    table = Table(title=f"{title}{h.batch}")
    for column in ("model", "port", "samples", "seconds", "resends", "accuracy", "exact"):
        left = column in ("model", "port")
        table.add_column(column, justify="left" if left else "right", no_wrap=True)
    for b in result.boards:
        bits = "yes" if b.matches_reference else "NO"
        table.add_row(
            f"board {b.board_id}", b.port, str(b.samples), f"{b.seconds:.2f}", str(b.resends),
            f"{b.accuracy:.4f}", bits,
        )  # fmt: skip
    samples = str(sum(b.samples for b in result.boards))
    average = f"{result.average_accuracy:.4f}"
    table.add_row("average", "", samples, f"{result.seconds:.2f}", "", average, "")
    central = f"{result.centralized_accuracy:.4f}"
    table.add_row("centralized", "", samples, "", "", central, "")
    out.print(table)


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage and config errors print one line and exit 2, never a traceback."""
    from distlab.runtime.launch import RunFailed, RunInterrupted

    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or "--help" in args:
        _resolve_help(command)
    # With no arguments show the full help (exit 0), not a usage error squeezed into one line.
    try:
        code = command.main(args=args or ["--help"], prog_name="distlab", standalone_mode=False)
    except RunInterrupted as exc:  # Ctrl-C exits 130, SIGTERM 143, as the shell reports them
        _fail(str(exc), exc.exit_code)
    except (typer.Abort, KeyboardInterrupt) as exc:
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
    from distlab.runtime.launch import is_follower

    line = f"error: {' '.join(message.split())}"
    # Under a launcher every rank reaches the same error; rank 0 prints it once.
    if not is_follower():
        print(line, file=sys.stderr)
    if "TORCHELASTIC_ERROR_FILE" in os.environ:  # every rank: torchrun's report names it
        from distlab.runtime.launchers.external import tell_launcher

        tell_launcher(line)
    sys.exit(code)


if __name__ == "__main__":
    main()
