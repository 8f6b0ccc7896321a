"""The README's `distlab` command lines, read when the tests run: each one parses as the CLI
parses it, each `distlab run` builds a valid config (no training), and the fast commands
really run in a scratch directory and exit 0."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import typer
from tests.conftest import REPO, cli, run_small

from distlab.cli import app
from distlab.config import FLAG_KEYS, build_config

README = REPO / "README.md"
# Commands quick enough to run for real; `run` trains, so its lines are only validated.
FAST = ("partition", "datasets", "strategies", "report", "show")
# Options that need files, a network or a GPU this machine may not have.
NEEDS_MORE = ("--data-dir", "--download", "cuda")
# Programs that start the processes themselves; their lines are validated, never run.
LAUNCHERS = ("torchrun", "mpirun", "mpiexec", "srun")
# Where a shell line goes on past the distlab command (a pipe, a redirect, a second command).
SHELL_OPERATORS = ("|", "||", "&&", ";", ">", ">>", "2>", "&")


def readme_commands() -> list[tuple[list[str], bool]]:
    """(argv after `distlab`, started by a launcher) for every `distlab` command in the
    README's ```bash blocks: `distlab ...`, `.venv/bin/distlab ...`, `python -m distlab ...`,
    `torchrun ... -m distlab ...`."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        loop: dict[str, str] = {}
        for line in block.replace("\\\n", " ").splitlines():
            # A `for P in 1 2 3; do` loop: check its body with the loop's first value.
            found = re.match(r"\s*for (\w+) in (\S+)", line)
            if found:
                loop[found[1]] = found[2]
                continue
            for name, value in loop.items():
                line = line.replace(f"${name}", value)
            words = shlex.split(line, comments=True)
            at = next((i for i, w in enumerate(words) if Path(w).name == "distlab"), None)
            if at is not None:
                args = words[at + 1 :]
                end = next((i for i, w in enumerate(args) if w in SHELL_OPERATORS), len(args))
                launched = any(Path(w).name in LAUNCHERS for w in words[:at])
                commands.append((args[:end], launched))
    return commands


def readme_file(name: str) -> str | None:
    """The code block the README shows right after naming `name` (e.g. exp.yaml)."""
    found = re.search(
        rf"`{re.escape(name)}`:?\s*\n+```\w*\n(.*?)^```", README.read_text(), re.M | re.S
    )
    return found.group(1) if found else None


def parse(args: list[str]) -> tuple[str, dict]:
    """The command name and its parameters, as the CLI would hand them to the command;
    a usage error (unknown command or option, bad value) raises."""
    name, *rest = args
    group = typer.main.get_command(app)
    assert name in group.commands, f"README uses unknown command {name!r}"
    return name, group.commands[name].make_context(name, rest).params


def run_dir_args(name: str, params: dict) -> list[Path]:
    if name == "report":
        return list(params["run_dirs"])
    if name == "show":
        return [params["run_dir"]]
    return []


def plain(value):
    return str(value) if isinstance(value, Path) else value


def dotted(data: dict, key: str):
    for part in key.split("."):
        data = data[part]
    return data


def command_id(command: tuple[list[str], bool]) -> str:
    return " ".join(command[0])[:60]


COMMANDS = readme_commands()
RUNS = [c for c in COMMANDS if c[0][:1] == ["run"]]
QUICK = [c for c in COMMANDS if c[0][:1] and c[0][0] in FAST]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    return run_small(tmp_path_factory.mktemp("readme-run")).run_dir


def test_the_readme_shows_runs_and_fast_commands():
    names = {args[0] for args, _ in COMMANDS if args}

    assert {"run", "partition", "report"} <= names, names


@pytest.mark.parametrize("command", RUNS, ids=command_id)
def test_run_line_builds_a_valid_config(command, tmp_path, monkeypatch):
    _, params = parse(command[0])
    config = None if params["config"] is None else Path(params["config"])
    if config is not None:
        text = readme_file(config.name)
        if text is None:
            pytest.skip(f"the README does not show {config.name}")
        monkeypatch.chdir(tmp_path)
        config.write_text(text)
    flags = {FLAG_KEYS[k]: v for k, v in params.items() if k in FLAG_KEYS}

    cfg = build_config(config, flags, params["set_"] or [])

    # Paths compare as text: click hands them over as str or Path depending on its version.
    given = {key: plain(value) for key, value in flags.items() if value is not None}
    assert {key: plain(dotted(cfg.model_dump(), key)) for key in given} == given


@pytest.mark.parametrize("command", QUICK, ids=command_id)
def test_fast_command_runs_and_exits_0(command, tmp_path, small_run):
    args, launched = command
    if launched or any(word in args for word in NEEDS_MORE):
        pytest.skip("needs a launcher, dataset files, a network or a GPU")
    if any(arg.endswith(".json") for arg in args):
        # test_report_cli.py makes a link file with probe-network and prices runs on it
        pytest.skip("needs a file an earlier line makes under a launcher")
    name, params = parse(args)
    # The run directories a line names are copies of one real small run.
    for path in map(Path, run_dir_args(name, params)):
        if path.is_absolute():
            pytest.skip(f"names a run directory outside the scratch directory: {path}")
        shutil.copytree(small_run, tmp_path / path)

    done = cli(*args, cwd=tmp_path)

    assert done.returncode == 0, done.stderr


SWEEPS = [c for c in COMMANDS if c[0][:1] in (["sweep"], ["compare"])]


@pytest.mark.parametrize("command", SWEEPS, ids=command_id)
def test_sweep_line_plans_every_cell(command, tmp_path):
    """Each README sweep plans (every cell validated, nothing run) from the repository, where
    its sweep files are; a compare line parses."""
    args, _ = command
    name, params = parse(args)
    if name == "compare":
        return
    if "--out-dir" not in args:
        args = [*args, "--out-dir", str(tmp_path)]
    done = cli(*args, *([] if "--dry-run" in args else ["--dry-run"]), cwd=REPO)

    assert done.returncode == 0, done.stderr
    assert not any(tmp_path.iterdir())


DEPLOYS = [c for c in COMMANDS if c[0][:1] == ["deploy"]]


def test_the_readme_shows_every_deploy_command():
    assert {args[1] for args, _ in DEPLOYS} == {"certs", "server", "client", "local"}


@pytest.mark.parametrize("command", DEPLOYS, ids=command_id)
def test_deploy_line_parses(command):
    """Every option of a README deploy line exists and takes its value (the commands
    themselves run in tests/integration/test_deploy.py with these flags)."""
    group = typer.main.get_command(app).commands["deploy"]
    sub, *rest = command[0][1:]
    assert sub in group.commands
    params = group.commands[sub].make_context(sub, rest).params
    assert all(params[key] is not None for key in ("server", "ca", "key") if key in params)
