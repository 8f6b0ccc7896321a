"""`distlab dashboard`: watch runs live in the browser."""

from __future__ import annotations

from pathlib import Path

import typer

commands = typer.Typer()


@commands.command()
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
