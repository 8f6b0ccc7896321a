"""Tests of RunConfig loading: files, overrides, precedence, validation messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from distlab.config import (
    MAX_CLIENTS,
    MAX_EPOCHS,
    MAX_ROUNDS,
    RunConfig,
    build_config,
    config_data,
    describe_error,
    parse_override,
    read_config_file,
    set_dotted,
    validate_config,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- read_config_file


def test_read_yaml_toml_and_json_give_the_same_dict(tmp_path):
    expected = {"epochs": 2, "optimizer": {"lr": 0.1}, "strategy": "allreduce"}
    yaml_file = write(
        tmp_path / "c.yaml", "epochs: 2\noptimizer:\n  lr: 0.1\nstrategy: allreduce\n"
    )
    toml_file = write(
        tmp_path / "c.toml", 'epochs = 2\nstrategy = "allreduce"\n[optimizer]\nlr = 0.1\n'
    )
    json_file = write(tmp_path / "c.json", json.dumps(expected))

    read = [read_config_file(p) for p in (yaml_file, toml_file, json_file)]

    assert read == [expected, expected, expected]


def test_read_suffix_in_capitals(tmp_path):
    path = write(tmp_path / "C.TOML", "epochs = 2\n")

    assert read_config_file(path) == {"epochs": 2}


def test_read_file_that_is_not_text(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"epochs: \xff\xfe\n")

    with pytest.raises(ValueError, match=r"config file .*c\.yaml' is not UTF-8 text"):
        read_config_file(path)


def test_read_empty_yaml_is_an_empty_mapping(tmp_path):
    assert read_config_file(write(tmp_path / "c.yaml", "# nothing set\n")) == {}


def test_read_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "absent.yaml"

    with pytest.raises(ValueError, match=r"cannot read config file .*absent\.yaml"):
        read_config_file(missing)


@pytest.mark.parametrize(
    ("name", "text"),
    [("c.yaml", "epochs: [1\n"), ("c.toml", "epochs = \n"), ("c.json", '{"epochs": }')],
)
def test_read_malformed_file_is_one_line(tmp_path, name, text):
    path = write(tmp_path / name, text)

    with pytest.raises(ValueError, match=rf"malformed config file .*{name}") as info:
        read_config_file(path)

    assert "\n" not in str(info.value)


def test_read_file_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path / "c.yaml", "- 1\n- 2\n")

    with pytest.raises(ValueError, match="must hold a mapping"):
        read_config_file(path)


# ---------------------------------------------------------------- parse_override / set_dotted


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("epochs=10", ("epochs", 10)),
        ("optimizer.lr=0.5", ("optimizer.lr", 0.5)),
        ("download=true", ("download", True)),
        ("name=my-run", ("name", "my-run")),
        ("name=a=b", ("name", "a=b")),
        (" strategy.mode = async", ("strategy.mode", "async")),
        ("fault=null", ("fault", None)),
        ("name=", ("name", "")),
        ("name=[1", ("name", "[1")),  # not valid YAML: kept as the raw string
    ],
)
def test_parse_override_reads_values_as_yaml(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["epochs", "=3", "optimizer..lr=1", ".lr=1", "lr.=1"])
def test_parse_override_rejects_bad_syntax(text):
    with pytest.raises(ValueError, match=r"bad --set .*expected key=value"):
        parse_override(text)


def test_set_dotted_creates_nested_mappings():
    data = {"epochs": 1}

    set_dotted(data, "optimizer.lr", 0.1)
    set_dotted(data, "optimizer.momentum", 0.9)

    assert data == {"epochs": 1, "optimizer": {"lr": 0.1, "momentum": 0.9}}


def test_set_dotted_expands_short_forms():
    data = {"strategy": "param-server", "partition": "dirichlet"}

    set_dotted(data, "strategy.mode", "async")
    set_dotted(data, "partition.alpha", 0.1)

    assert data == {
        "strategy": {"name": "param-server", "mode": "async"},
        "partition": {"scheme": "dirichlet", "alpha": 0.1},
    }


def test_set_dotted_refuses_to_replace_a_value_that_is_not_a_mapping():
    data = {"optimizer": "adam"}

    with pytest.raises(ValueError, match=r"cannot set 'optimizer.lr': optimizer is 'adam'"):
        set_dotted(data, "optimizer.lr", 0.1)

    assert data == {"optimizer": "adam"}


def test_set_dotted_fills_a_null_mapping():
    data = {"fault": None}

    set_dotted(data, "fault.rank", 1)

    assert data == {"fault": {"rank": 1}}


# ---------------------------------------------------------------- build_config


def test_build_config_precedence_file_then_flags_then_set(tmp_path):
    path = write(tmp_path / "c.yaml", "epochs: 5\nbatch_size: 8\nseed: 3\noptimizer: {lr: 0.2}\n")
    flags = {"epochs": 2, "batch_size": 16, "optimizer.lr": None}

    cfg = build_config(path, flags, ["epochs=7"])

    assert (cfg.epochs, cfg.batch_size, cfg.seed, cfg.optimizer.lr) == (7, 16, 3, 0.2)


def test_build_config_without_anything_is_the_default():
    assert build_config() == RunConfig()


def test_build_config_short_forms_and_dotted_keys(tmp_path):
    path = write(tmp_path / "c.toml", 'strategy = "fedavg"\npartition = "dirichlet"\n')
    sets = ["strategy.rounds=3", "partition.alpha=0.1", "optimizer.lr=0.01"]

    cfg = build_config(path, {"workers": 2}, sets)

    assert (cfg.strategy.name, cfg.strategy.rounds) == ("fedavg", 3)
    assert (cfg.partition.scheme, cfg.partition.alpha) == ("dirichlet", 0.1)
    assert cfg.optimizer.lr == 0.01 and cfg.workers == 2


def test_build_config_flag_changes_strategy_named_in_file(tmp_path):
    path = write(tmp_path / "c.json", json.dumps({"strategy": {"name": "centralized"}}))

    cfg = build_config(path, {"strategy.name": "allreduce", "workers": 3})

    assert cfg.strategy.name == "allreduce" and cfg.workers == 3


def test_build_config_set_values_are_typed():
    cfg = build_config(overrides=["epochs=4", "download=yes", "data_dir=/tmp/d"])

    assert cfg.epochs == 4 and cfg.download is True
    assert cfg.data_dir == Path("/tmp/d")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["nope=1"],
            r"unknown config key 'nope' \(allowed: name, dataset, .*, edge, tensorboard\)",
        ),
        (["optimizer.beta=1"], r"'optimizer.beta' \(allowed: name, lr, momentum, weight_decay\)"),
        (["strategy.mode=async"], r"'strategy.mode' for strategy 'centralized' \(allowed: name\)"),
        (["partition.alpha=1"], r"'partition.alpha' for scheme 'iid' \(allowed: scheme\)"),
    ],
)
def test_build_config_unknown_key_names_it_and_the_allowed_keys(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_config(overrides=overrides)


@pytest.mark.parametrize(("name", "text"), [("c.yaml", "# nothing set\n"), ("c.json", "{}")])
def test_build_config_refuses_an_empty_file(tmp_path, name, text):
    # read_config_file reads it as {} (a search space says its own words about that); a run's
    # --config that sets nothing is a mistake, not a request for the defaults
    path = write(tmp_path / name, text)

    with pytest.raises(ValueError, match=rf"config file '.*{name}' is empty: it sets no key"):
        build_config(path)


def test_build_config_unknown_key_in_file(tmp_path):
    path = write(tmp_path / "c.yaml", "epochs: 1\nlearning_rate: 0.1\n")

    with pytest.raises(ValueError, match="unknown config key 'learning_rate'"):
        build_config(path)


# ---------------------------------------------------------------- validation and messages


def errors_of(data: dict) -> str:
    with pytest.raises(ValidationError) as info:
        RunConfig.model_validate(data)
    return describe_error(info.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"workers": 0}, "workers must be >= 1 (got 0)"),
        ({"optimizer": {"lr": 0}}, "optimizer.lr must be > 0"),
        ({"optimizer": {"momentum": 1.0}}, "optimizer.momentum must be < 1"),
        ({"device": "gpu"}, "device must be one of cpu, cuda or auto (got 'gpu')"),
        ({"optimizer": {"name": "rmsprop"}}, "optimizer.name must be one of sgd or adam"),
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet' (allowed: breast-cancer, cifar10"),
        ({"model": "resnet"}, "unknown model 'resnet' (allowed: cnn-dropout, lenet, logreg, mlp,"),
        ({"strategy": {"name": "nope"}}, "unknown strategy.name 'nope' (allowed: centralized"),
        ({"partition": {"scheme": "nope"}}, "unknown partition.scheme 'nope' (allowed: iid"),
        ({"epochs": "many"}, "epochs input should be a valid integer"),
    ],
)
def test_describe_error_names_key_value_and_allowed(data, expected):
    bad = next(iter(data.values()))
    bad = next(iter(bad.values())) if isinstance(bad, dict) else bad

    message = errors_of(data)

    assert message.startswith(expected)
    assert repr(bad) in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"epochs": MAX_EPOCHS + 1}, f"epochs must be <= {MAX_EPOCHS} (got {MAX_EPOCHS + 1})"),
        ({"epochs": 1e12}, f"epochs must be <= {MAX_EPOCHS} (got 1000000000000.0)"),
        ({"strategy": {"name": "fedavg", "rounds": MAX_ROUNDS + 1}}, "strategy.rounds must be <="),
        ({"strategy": {"name": "fedavg", "clients": MAX_CLIENTS + 1}}, "strategy.clients must be"),
    ],
)
def test_bounds_no_real_run_reaches_are_refused_with_the_bound(data, expected):
    with pytest.raises(ValueError) as info:
        validate_config(data)

    assert str(info.value).startswith(expected)


def test_the_bounds_themselves_are_allowed():
    cfg = validate_config(
        {"epochs": MAX_EPOCHS, "strategy": {"name": "fedavg", "rounds": MAX_ROUNDS}}
    )

    assert cfg.epochs == MAX_EPOCHS and cfg.strategy.rounds == MAX_ROUNDS


def test_the_epochs_bound_is_in_the_help_text():
    assert str(MAX_EPOCHS) in RunConfig.model_fields["epochs"].description


def test_an_empty_name_is_refused():
    with pytest.raises(ValueError, match="name must not be empty"):
        validate_config({"name": ""})


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"fault": {"rank": 1}}, r"fault.rank must be < 1, .* \(got 1; .* runs rank 0\)"),
        (
            {"strategy": "allreduce", "workers": 2, "fault": {"rank": 7}},
            r"fault.rank must be < 2, the run's process count \(got 7; .* ranks 0 to 1\)",
        ),
    ],
)
def test_a_fault_on_a_rank_the_run_lacks_is_refused(data, expected):
    with pytest.raises(ValueError, match=expected):
        validate_config(data)


def test_a_fault_on_the_server_of_a_parameter_server_run_is_a_rank_of_it():
    cfg = validate_config({"strategy": "param-server", "workers": 2, "fault": {"rank": 2}})

    assert cfg.fault.rank == 2  # workers + the server: 3 processes


@pytest.mark.parametrize("config", ["notadict", 3, ["epochs", 1], None])
def test_config_data_refuses_what_is_no_mapping(config):
    with pytest.raises(ValueError, match=r"config must be a mapping .* or a RunConfig \(got "):
        config_data(config)


def test_config_data_takes_a_mapping_or_a_run_config():
    assert config_data({"epochs": 2}) == {"epochs": 2}
    assert config_data(RunConfig(epochs=2))["epochs"] == 2


@pytest.mark.parametrize("name", [".", "..", "a/b", "../up", "a\\b"])
def test_name_must_stay_inside_out_dir(name):
    with pytest.raises(ValueError, match=r"name must be a plain directory name"):
        validate_config({"name": name})


def test_momentum_applies_to_sgd_only():
    with pytest.raises(
        ValueError, match=r"optimizer.momentum applies to sgd only \(name is 'adam'\)"
    ):
        validate_config({"optimizer": {"name": "adam", "momentum": 0.9}})


def test_validate_config_runs_strategy_checks():
    with pytest.raises(ValueError, match=r"--workers must be 1 \(got 2\)"):
        validate_config({"workers": 2})


def test_validate_config_short_forms():
    cfg = validate_config({"strategy": "fedavg", "partition": "shards", "workers": 2})

    assert cfg.strategy.name == "fedavg" and cfg.partition.scheme == "shards"


def test_config_is_frozen():
    cfg = RunConfig()

    with pytest.raises(ValidationError, match="frozen"):
        cfg.epochs = 9
    with pytest.raises(ValidationError, match="frozen"):
        cfg.optimizer.lr = 1.0
    assert cfg.epochs == 3 and cfg.optimizer.lr == 0.05


def test_config_json_round_trips():
    cfg = validate_config({"strategy": "allreduce", "workers": 2, "optimizer": {"lr": 0.1}})

    assert validate_config(json.loads(cfg.to_json())) == cfg


def test_network_interface_key():
    assert validate_config({}).network.interface is None
    cfg = build_config(overrides=["network.interface=eth0"])

    assert cfg.network.interface == "eth0"
    with pytest.raises(
        ValueError, match=r"unknown config key 'network.iface' \(allowed: interface\)"
    ):
        build_config(overrides=["network.iface=eth0"])
