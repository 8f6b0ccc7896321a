"""Bad input to `distlab run`: one line on stderr, exit 2, no traceback, nothing written."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import cli

from distlab.api import run
from distlab.cli import main
from distlab.config import RunConfig

TINY = ["--dataset", "synthetic", "--model", "logreg", "--epochs", "1", "--batch-size", "500"]


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 00 00 08 ndim, big-endian dims, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist_dir(directory: Path, truncate: str | None = None) -> None:
    """The four MNIST IDX files with 10 tiny samples each; `truncate` cuts one file short."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ("train", "t10k"):
        images = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
        for stem, array in [
            (f"{split}-images-idx3-ubyte", images),
            (f"{split}-labels-idx1-ubyte", np.arange(10)),
        ]:
            data = idx_bytes(array)
            (directory / stem).write_bytes(data[:100] if stem == truncate else data)


def assert_one_line_error(stderr: str, *parts: str) -> None:
    assert stderr.startswith("error: ") and stderr.endswith("\n")
    assert stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    for part in parts:
        assert part in stderr


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


# ---------------------------------------------------------------- in-process: config problems


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        (["--model", "vgg"], ["unknown model 'vgg'", "allowed: cnn-dropout, lenet, logreg, mlp"]),
        (["--strategy", "gossipy"], ["'gossipy'", "allowed: centralized, allreduce, ddp"]),
        (["--optimizer", "rmsprop"], ["optimizer.name must be one of sgd or adam", "'rmsprop'"]),
        (["--workers", "0"], ["workers must be >= 1 (got 0)"]),
        (["--batch-size", "0"], ["batch_size must be >= 1 (got 0)"]),
        (["--lr", "0"], ["optimizer.lr must be > 0", "(got 0.0)"]),
        (["--lr", "-0.1"], ["optimizer.lr must be > 0", "(got -0.1)"]),
        (["--epochs", "0"], ["epochs must be >= 1 (got 0)"]),
        (["--workers", "2"], ["--workers must be 1 (got 2)"]),
        (["--sampler", "sorted"], ["sampler must be one of split-batch, random or balanced"]),
        (["--set", "optimizer.beta=0.9"], ["'optimizer.beta'", "allowed: name, lr, momentum"]),
        (["--set", "=1"], ["bad --set '=1'", "key=value"]),
        (["--set", "epochs"], ["bad --set 'epochs'", "expected key=value"]),
        (["--set", "learning_rate=0.1"], ["unknown config key 'learning_rate'", "allowed:"]),
        (["--device", "gpu"], ["device must be one of cpu, cuda or auto (got 'gpu')"]),
        (["--name", "..", "--overwrite"], ["name must be a plain directory name", "'..'"]),
        (["--lr", "fast"], ["'--lr'", "'fast'"]),
        (["--epohcs", "2"], ["No such option", "--epohcs"]),
        (["--lr", "inf"], ["optimizer.lr must be a finite number (got inf)"]),
        (["--lr", "1e400"], ["optimizer.lr must be a finite number"]),
        (["--set", "strategy.server_lr=.nan", "--strategy", "fedavg"], ["server_lr", "finite"]),
        (["--seed", "-1"], ["seed must be >= 0 (got -1)"]),
        (["--seed", "4294967296"], ["seed must be <= 4294967295 (got 4294967296)"]),
        (["--name", "n" * 256], ["name must be at most 255 bytes", "(got 256)"]),
        (["--model", "lenet", "--dataset", "synthetic"], ["LeNet needs image input", "(20,)"]),
        (["--strategy", "fedavg", "--clients", "100000"], ["clients (100000) must be <= samples"]),
        (
            ["--strategy", "fedavg", "--partition", "classes", "--classes-per-client", "20"],
            ["classes_per_client must be in [1, 10] (got 20)"],
        ),
        (
            ["--strategy", "allreduce", "--workers", "3", "--batch-size", "2"],
            ["--batch-size (2) must be >= --workers (3)", "split-batch"],
        ),
        (
            ["--strategy", "allreduce", "--workers", "5000", "--sampler", "random"],
            ["5000 processes on", "--set oversubscribe=true"],
        ),
        # bounds no real run reaches, said with the value
        (["--epochs", "1000000000000"], ["epochs must be <= 100000 (got 1000000000000)"]),
        (
            ["--strategy", "fedavg", "--rounds", "1000000000000"],
            ["strategy.rounds must be <= 1000000 (got 1000000000000)"],
        ),
        (
            ["--strategy", "fedavg", "--clients", "2000000"],
            ["strategy.clients must be <= 1000000 (got 2000000)"],
        ),
        (
            [
                "--dataset",
                "synthetic",
                "--model",
                "logreg",
                "--epochs",
                "100000",
                "--batch-size",
                "1",
            ],
            ["the run would take 200000000 steps", "at most 100000000 are allowed"],
        ),
        # a batch larger than the data a worker holds
        (
            ["--batch-size", "100000"],
            [
                "--batch-size 100000 is larger than the 4000 training samples of mnist-sample",
                "allowed: 1 to 4000",
            ],
        ),
        (
            [
                *TINY[:4],
                "--strategy",
                "allreduce",
                "--workers",
                "2",
                "--sampler",
                "random",
                "--batch-size",
                "1500",
            ],
            [
                "--batch-size 1500 (per worker under sampler random)",
                "1000 training samples each",
                "allowed: 1 to 1000",
            ],
        ),
        (
            [*TINY[:4], "--strategy", "fedavg", "--batch-size", "2001"],
            ["--batch-size 2001 is larger than the 2000 training samples", "per client"],
        ),
        (["--name", ""], ["name must not be empty", "automatic"]),
        # a fault that would never fire
        (
            [*TINY, "--strategy", "allreduce", "--workers", "2", "--set", "fault.rank=7"],
            ["fault.rank must be < 2, the run's process count (got 7", "ranks 0 to 1"],
        ),
        (
            [*TINY, "--set", "fault.kind=exit"],  # fault.rank defaults to 1
            ["fault.rank must be < 1, the run's process count (got 1", "runs rank 0)"],
        ),
        (
            [*TINY, "--set", "fault.rank=0", "--set", "fault.step=5"],
            ["fault.step must be <= 4, the run's last step", "(got 5)"],
        ),
        (  # FedAvg's server counts rounds
            [
                *TINY,
                "--strategy",
                "fedavg",
                "--rounds",
                "3",
                "--set",
                "fault.rank=0",
                "--set",
                "fault.step=5",
            ],
            ["fault.step must be <= 3", "(got 5)"],
        ),  # fmt: skip
    ],
)
def test_config_error_is_one_line_and_writes_nothing(tmp_path, capsys, args, parts):
    out = tmp_path / "runs"

    code, stdout, stderr = run_main(capsys, "run", "--out-dir", str(out), *args)

    assert code == 2 and stdout == ""
    assert_one_line_error(stderr, *parts)
    assert not out.exists()


def test_unknown_key_in_config_file(tmp_path, capsys):
    out, path = tmp_path / "runs", tmp_path / "exp.toml"
    path.write_text("epochs = 1\n[optimizer]\nrate = 0.1\n")

    code, _, stderr = run_main(capsys, "run", "--config", str(path), "--out-dir", str(out))

    assert code == 2
    assert_one_line_error(stderr, "unknown config key 'optimizer.rate'")
    assert not out.exists()


@pytest.mark.parametrize(("name", "text"), [("empty.yaml", ""), ("c.yaml", "# nothing\n"),
                                            ("c.json", "{}"), ("c.toml", "")])  # fmt: skip
def test_empty_config_file_is_refused(tmp_path, capsys, name, text):
    out, path = tmp_path / "runs", tmp_path / name
    path.write_text(text)

    code, _, stderr = run_main(capsys, "run", "--config", str(path), "--out-dir", str(out))

    assert code == 2
    assert_one_line_error(stderr, f"config file {str(path)!r} is empty")
    assert not out.exists()


def test_malformed_toml_config(tmp_path, capsys):
    out, path = tmp_path / "runs", tmp_path / "exp.toml"
    path.write_text("epochs = = 1\n")

    code, _, stderr = run_main(capsys, "run", "--config", str(path), "--out-dir", str(out))

    assert code == 2
    assert_one_line_error(stderr, "malformed config file", "exp.toml")
    assert not out.exists()


def test_existing_run_directory_is_refused_then_replaced_with_overwrite(tmp_path, capsys):
    out = tmp_path / "runs"
    (out / "r1").mkdir(parents=True)
    (out / "r1" / "config.json").write_text("{}")  # an earlier run
    args = ["run", *TINY, "--out-dir", str(out), "--name", "r1", "--quiet"]

    refused = run_main(capsys, *args)
    kept = (out / "r1" / "config.json").read_text() == "{}"
    replaced = run_main(capsys, *args, "--overwrite")

    assert refused[0] == 2 and kept
    assert_one_line_error(refused[2], "run directory", "r1", "exists", "--overwrite")
    assert replaced == (0, "", "")
    assert sorted(p.name for p in (out / "r1").iterdir()) == [
        "config.json",
        "events",
        "events.jsonl",
        "model.pt",
        "summary.json",
    ]


def test_bare_command_prints_the_help(capsys):
    code, stdout, stderr = run_main(capsys)

    assert code == 0 and stderr == ""
    assert stdout.startswith("Usage: distlab") and "run" in stdout and "datasets" in stdout


def test_overwrite_never_deletes_a_directory_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")

    code, _, stderr = run_main(
        capsys, "run", *TINY, "--out-dir", str(tmp_path), "--name", "notes", "--overwrite"
    )

    assert code == 2
    assert_one_line_error(stderr, "notes", "is not a run directory")
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["todo.txt"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"summary.json": "{}"}, "cannot read"),
        ({"summary.json": '{"a": ', "config.json": "{}"}, "is not valid JSON"),
    ],
)
def test_show_on_a_damaged_run_directory(tmp_path, capsys, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)

    code, _, stderr = run_main(capsys, "show", str(tmp_path))

    assert code == 2
    assert_one_line_error(stderr, message)


def test_missing_run_directory_for_show(tmp_path, capsys):
    code, _, stderr = run_main(capsys, "show", str(tmp_path / "nothing"))

    assert code == 2
    assert_one_line_error(stderr, "nothing", "not a finished run directory")


def test_report_checks_the_latency_without_a_network(tmp_path, capsys):
    out = tmp_path / "report"

    code, _, stderr = run_main(
        capsys, "report", str(tmp_path / "runs"), "--latency", "abc", "--out", str(out)
    )

    assert code == 2
    assert_one_line_error(stderr, "--latency must be a time >= 0", "(got 'abc')")
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("a,b,y\n1,2,x\n3,red,z\n", ["column 'b' holds 'red' on line 3", "must be numeric"]),
        ("a,b,y\n1,2,x\n3,z\n", ["line 3 has 2 fields, the header 3"]),
    ],
)
def test_tune_sklearn_names_the_csv_value_that_is_no_number(tmp_path, capsys, text, parts):
    data, out = tmp_path / "t.csv", tmp_path / "out"
    data.write_text(text)
    args = ["--estimator", "knn", "-p", "n_neighbors=1", "--out", str(out)]

    code, _, stderr = run_main(capsys, "tune-sklearn", "--csv", str(data), "--target", "y", *args)

    assert code == 2
    assert_one_line_error(stderr, "--csv t.csv: ", *parts)
    assert not out.exists()


# ---------------------------------------------------------------- subprocess: the real command


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        (["--dataset", "imagenet"], ["unknown dataset 'imagenet'", "breast-cancer, cifar10"]),
        (["--epoch", "2"], ["No such option", "'--epoch'", "--epochs"]),
        (["--config", "absent.yaml"], ["cannot read config file 'absent.yaml'"]),
        (["--dataset", "mnist", "--data-dir", "/nonexistent"], ["data dir '/nonexistent'"]),
    ],
)
def test_command_reports_bad_input_in_one_line(tmp_path, args, parts):
    proc = cli("run", "--out-dir", "runs", *args, cwd=tmp_path)

    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_line_error(proc.stderr, *parts)
    assert list(tmp_path.iterdir()) == []


def test_command_reports_malformed_yaml(tmp_path):
    (tmp_path / "exp.yaml").write_text("epochs: [1\n")

    proc = cli("run", "--config", "exp.yaml", "--out-dir", "runs", cwd=tmp_path)

    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "malformed config file 'exp.yaml'")
    assert not (tmp_path / "runs").exists()


def test_command_reports_corrupt_data_file(tmp_path):
    write_mnist_dir(tmp_path / "data" / "mnist", truncate="train-images-idx3-ubyte")

    proc = cli("run", "--dataset", "mnist", "--data-dir", "data", "--out-dir", "runs", cwd=tmp_path)

    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "train-images-idx3-ubyte is truncated")
    assert not (tmp_path / "runs").exists()


def test_command_reports_unwritable_out_dir(tmp_path):
    (tmp_path / "file").write_text("a regular file cannot hold a run directory")

    proc = cli("run", *TINY, "--out-dir", "file/runs", cwd=tmp_path)

    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "out_dir 'file/runs' is not writable")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ---------------------------------------------------------------- the API raises ValueError


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"),
        ({"model": "vgg"}, "unknown model 'vgg'"),
        ({"strategy": "gossipy"}, "unknown strategy.name 'gossipy'"),
        ({"optimizer": {"name": "rmsprop"}}, "optimizer.name must be one of sgd or adam"),
        ({"workers": 0}, r"workers must be >= 1 \(got 0\)"),
        ({"batch_size": 0}, r"batch_size must be >= 1 \(got 0\)"),
        ({"optimizer": {"lr": 0}}, "optimizer.lr must be > 0"),
        ({"epochs": 0}, r"epochs must be >= 1 \(got 0\)"),
        ({"learning_rate": 0.1}, "unknown config key 'learning_rate'"),
        ({"dataset": "mnist", "data_dir": "/nonexistent"}, "data dir '/nonexistent'"),
        ({"epochs": 1e9}, r"epochs must be <= 100000 \(got 1000000000.0\)"),
        ({"strategy": {"name": "fedavg", "rounds": 10**12}}, r"strategy.rounds must be <= 1000000"),
        ({"name": ""}, "name must not be empty"),
        ({"batch_size": 100000}, "--batch-size 100000 is larger than the 4000 training samples"),
        ({"workers": 2, "strategy": "allreduce", "fault": {"rank": 2}}, r"fault.rank must be < 2"),
    ],
)
def test_api_raises_value_error_before_writing(tmp_path, fields, message):
    out = tmp_path / "runs"

    with pytest.raises(ValueError, match=message):
        run({"out_dir": str(out), **fields})

    assert not out.exists()


@pytest.mark.parametrize("config", ["notadict", 5, ["epochs", 1]])
def test_api_refuses_a_config_that_is_no_mapping(config):
    with pytest.raises(
        ValueError, match="config must be a mapping of keys to values or a RunConfig"
    ):
        run(config)


def test_api_checks_a_run_config_built_directly(tmp_path):
    cfg = RunConfig(dataset="synthetic", workers=2, out_dir=tmp_path / "runs")

    with pytest.raises(ValueError, match=r"--workers must be 1 \(got 2\)"):
        run(cfg)

    assert not (tmp_path / "runs").exists()


def test_api_refuses_existing_run_directory(tmp_path):
    (tmp_path / "runs" / "r1").mkdir(parents=True)

    with pytest.raises(ValueError, match=r"run directory .*r1' exists"):
        run(
            {
                "dataset": "synthetic",
                "model": "mlp",
                "out_dir": str(tmp_path / "runs"),
                "name": "r1",
            }
        )

    assert list((tmp_path / "runs" / "r1").iterdir()) == []
