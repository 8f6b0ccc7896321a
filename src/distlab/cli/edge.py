"""`distlab edge build | sim | train`: Arduino Unos that train logistic regression over a
serial line, real boards or simulated ones."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.progress import TextColumn
from rich.table import Table

from distlab.cli.display import bars, out

commands = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Arduino Unos that train logistic regression over a serial line: real boards on USB, "
    "or the same firmware on simavr behind a pty (see docs/edge.md).",
)

EDGE_BAUD_HELP = "Line speed: 9600, 19200, 38400, 57600 or 115200 (the firmware's, see make BAUD=)."


@commands.command("build")
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


@commands.command("sim")
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


@commands.command("train")
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
    bars = EdgeBars(quiet=as_json)
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
        edge_table(result)


class EdgeBars:
    """A progress bar per board on stderr, advanced from the boards' threads (none if quiet)."""

    def __init__(self, quiet: bool) -> None:
        self.progress = None if quiet else bars(TextColumn("{task.completed}/{task.total} batches"))
        self.tasks: dict[int, Any] = {}

    def __enter__(self) -> EdgeBars:
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


def edge_table(result) -> None:
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
