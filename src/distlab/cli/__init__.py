"""The `distlab` command: the only package that reads argv; every error becomes one line.

distlab run                                   # centralized LeNet on the embedded MNIST sample
distlab run --strategy allreduce --workers 4  # 4 local processes, gloo
torchrun --nproc-per-node 4 -m distlab run --strategy allreduce --workers 4

Each module here is one group of commands (run, experiments, dashboard, deploy, edge);
flags.py declares the config flags they share and display.py draws what they print.
"""

from __future__ import annotations

import gc
import os
import re
import sys

import typer

from distlab.cli import dashboard, deploy, edge, experiments, network
from distlab.cli import run as run_commands
from distlab.cli.flags import resolve_help

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
# Unnamed groups add their commands to the top level, in this order in the help.
app.add_typer(run_commands.commands)
app.add_typer(experiments.commands)
app.add_typer(dashboard.commands)
app.add_typer(network.commands)
app.add_typer(deploy.commands, name="deploy")
app.add_typer(edge.commands, name="edge")


def print_version(value: bool) -> None:
    if value:
        from distlab import __version__

        print(f"distlab {__version__}")
        raise typer.Exit()


@app.callback()
def options(
    version: bool = typer.Option(
        False, "--version", callback=print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Run one model on one dataset under every distributed and federated paradigm."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage and config errors print one line and exit 2, never a traceback."""
    from distlab.runtime.launch import RunFailed, RunInterrupted

    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or "--help" in args:
        resolve_help(command)
    # With no arguments show the full help (exit 0), not a usage error squeezed into one line.
    try:
        code = command.main(args=args or ["--help"], prog_name="distlab", standalone_mode=False)
    except RunInterrupted as exc:  # Ctrl-C exits 130, SIGTERM 143, as the shell reports them
        fail(str(exc), exc.exit_code)
    except (typer.Abort, KeyboardInterrupt) as exc:
        fail(str(exc) or "interrupted", 130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except ValueError as exc:
        fail(str(exc), 2)
    except RunFailed as exc:
        fail(f"run failed: {exc}", 1)
    except Exception as exc:
        if not is_usage_error(exc):
            raise
        fail(usage_message(exc), 2)
    # Shutdown would spend about half a second collecting torch's objects one by one; frozen,
    # they are left to the OS (every file is closed by now).
    gc.freeze()
    sys.exit(code if isinstance(code, int) else 0)


def is_usage_error(exc: Exception) -> bool:
    # typer vendors click in newer releases; match its usage errors by shape, not by import.
    return hasattr(exc, "format_message") and getattr(exc, "exit_code", None) == 2


def usage_message(exc: Exception) -> str:
    # typer checks option types with pydantic, and its message leaves out the bad value.
    cause = exc.__cause__
    errors = cause.errors() if hasattr(cause, "errors") else []
    if errors and "input" in errors[0]:
        return f"{exc.format_message()} (got {errors[0]['input']!r})"
    # click and typer each add "Did you mean 'run'?" to an unknown command: say it once
    return re.sub(r"( Did you mean [^?]*\?)\1+", r"\1", exc.format_message())


def fail(message: str, code: int) -> None:
    """Print `message` as one `error: ` line (rank 0 only) and exit with `code`."""
    from distlab.runtime.launch import is_follower
    from distlab.runtime.launchers.external import speaks_for_node

    line = f"error: {' '.join(message.split())}"
    # Under a launcher every rank reaches the same error; rank 0 prints it once, and the
    # first process of each other node once there.
    if not is_follower() or speaks_for_node():
        print(line, file=sys.stderr)
    if "TORCHELASTIC_ERROR_FILE" in os.environ:  # every rank: torchrun's report names it
        from distlab.runtime.launchers.external import tell_launcher

        tell_launcher(line)
    sys.exit(code)


if __name__ == "__main__":
    main()
