"""What a new user reads first: --version, run --help, numbers, datasets, show."""

from __future__ import annotations

import pytest
from tests.conftest import cli, run_small

from distlab.cli import main
from distlab.cli.display import format_number
from distlab.runtime.launch import RunFailed
from distlab.strategies import STRATEGIES


def test_version_prints_the_package_version():
    from importlib.metadata import version

    done = cli("--version")

    assert done.returncode == 0 and done.stdout.strip() == f"distlab {version('distlab')}"


def test_run_help_shows_defaults_and_the_keys_without_a_flag():
    done = cli("run", "--help")
    text = " ".join(done.stdout.split())  # help wraps lines; compare words

    assert done.returncode == 0
    assert "Learning rate; must be > 0. [default: 0.05]" in text
    squeezed = "".join(done.stdout.split())  # wrapping may break a line after "param-"
    assert "Strategy:" + ",".join(STRATEGIES) + "." in squeezed
    for key in ("eval_every=0", "threads=0", "timeout=120.0", "save_model=true"):
        assert key in text
    for key in ("optimizer.weight_decay=0.0", "fault.kind=raise", "partition.max_retries=100"):
        assert key in text
    assert "lr=" not in text.split("Keys without a flag")[1]  # --lr has a flag


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.917, "0.917"),
        (0.9170000001, "0.917"),
        (0.27713, "0.2771"),
        (1.0, "1"),
        (44426, "44,426"),
        (355424.0, "355,424"),
        (12345.678, "12,345.7"),
        (0.00001234, "1.23e-05"),
        (0.0, "0"),
        ("completed", "completed"),
    ],
)
def test_numbers_print_without_trailing_zeros(value, shown):
    assert format_number(value) == shown


def test_datasets_prints_the_directory_to_fill_on_one_line(tmp_path):
    done = cli("datasets", "--data-dir", str(tmp_path), env={"COLUMNS": "80"})

    lines = done.stdout.splitlines()
    assert done.returncode == 0
    assert any(
        line.startswith("mnist: missing") and str(tmp_path / "mnist") in line for line in lines
    )


def test_show_prints_the_status_and_the_cause_of_a_failed_run(tmp_path, capsys):
    with pytest.raises(RunFailed):
        run_small(tmp_path, fault={"rank": 0, "step": 2, "kind": "raise"})
    run_dir = next((tmp_path / "runs").iterdir())

    with pytest.raises(SystemExit) as info:
        main(["show", str(run_dir)])
    text = capsys.readouterr().out

    assert info.value.code == 0
    assert "failed" in text
    assert "cause: rank 0 failed: RuntimeError: injected fault at step 2" in text


@pytest.mark.parametrize(
    "command", [["sweep"], ["dashboard"], ["deploy", "local"], ["deploy", "client"]]
)
def test_help_shows_defaults_in_plain_brackets(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = capsys.readouterr().out
    assert "[default: " in text and "\\[" not in text


def flag_help(text: str, flag: str) -> str:
    """One flag's help, its wrapped lines joined: from the flag to the next flag."""
    words = " ".join(text.split("Options:", 1)[1].split())
    return words.split(f" {flag} ", 1)[1].split(" --", 1)[0]


@pytest.mark.parametrize(
    ("command", "strategy", "clients"),
    [(["run"], "centralized", "10"), (["deploy", "local"], "fedavg", "3"),
     (["deploy", "server"], "fedavg", "10")],
)  # fmt: skip
def test_help_shows_the_defaults_each_command_applies(command, strategy, clients, capsys):
    from distlab.cli.deploy import deploy_data

    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = capsys.readouterr().out

    assert flag_help(text, "--strategy").endswith(f"[default: {strategy}]")
    assert flag_help(text, "--clients").endswith(f"[default: {clients}]")
    assert deploy_data({}, None)["strategy"] == "fedavg"  # what deploy runs without --strategy


def test_a_mistyped_command_is_one_line_with_one_suggestion():
    done = cli("probe-netwrk")

    assert done.returncode == 2
    assert done.stderr == (
        "error: No such command 'probe-netwrk'. Did you mean 'probe-network'?\n"
    ), done.stderr
