"""Search spaces: parsing, flattening, grid sizes and the one-line errors, by hand."""

from __future__ import annotations

import pytest

from distlab.experiments.tune.space import Domain, check_trials, grid_size, parse_space, read_space


def test_a_space_file_reads_each_kind_into_a_domain(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "optimizer.lr: {loguniform: [1.0e-3, 1.0e-1]}\n"
        "strategy.local_epochs: {choice: [1, 2, 5]}\n"
        "workers: {grid: [1, 2]}\n"
        "optimizer.momentum: {uniform: [0.0, 0.9]}\n"
    )

    space = read_space(path)

    assert space == {
        "optimizer.lr": Domain("loguniform", (1e-3, 1e-1)),
        "strategy.local_epochs": Domain("choice", (1, 2, 5)),
        "workers": Domain("grid", (1, 2)),
        "optimizer.momentum": Domain("uniform", (0.0, 0.9)),
    }


def test_nested_mappings_flatten_to_dotted_keys():
    space = parse_space({"optimizer": {"lr": {"grid": [0.1]}, "momentum": {"choice": [0, 0.9]}}})

    assert list(space) == ["optimizer.lr", "optimizer.momentum"]


def test_grid_size_multiplies_the_grid_keys_only():
    space = parse_space(
        {"a": {"grid": [1, 2, 3]}, "b": {"grid": [1, 2]}, "c": {"choice": [1, 2, 3, 4]}}
    )

    assert grid_size(space) == 6
    assert grid_size(parse_space({"c": {"uniform": [0, 1]}})) == 1


def test_to_ray_gives_tune_domains():
    pytest.importorskip("ray", reason="Domain.to_ray needs the ray package")
    from ray.tune.search.sample import Categorical, Float

    space = parse_space(
        {"g": {"grid": [1, 2]}, "c": {"choice": [1, 2]}, "u": {"uniform": [0, 1]},
         "l": {"loguniform": [1e-3, 1]}}
    )  # fmt: skip

    ray_space = {k: d.to_ray() for k, d in space.items()}

    assert ray_space["g"] == {"grid_search": [1, 2]}
    assert isinstance(ray_space["c"], Categorical) and ray_space["c"].categories == [1, 2]
    assert isinstance(ray_space["u"], Float) and (ray_space["u"].lower, ray_space["u"].upper) == (
        0,
        1,
    )
    assert isinstance(ray_space["l"], Float) and ray_space["l"].lower == 1e-3


@pytest.mark.parametrize(
    ("data", "said"),
    [
        ({"workers": {"grid": []}}, "'workers': grid needs a non-empty list"),
        ({"lr": {"uniform": [0.5, 0.1]}}, "'lr': low 0.5 > high 0.1"),
        ({"lr": {"loguniform": [0, 0.1]}}, "'lr': loguniform bounds must be > 0"),
        ({"lr": {"loguniform": [-1, 0.1]}}, "loguniform bounds must be > 0"),
        ({"lr": {"uniform": [0.1]}}, "uniform needs [low, high]"),
        ({"lr": {"uniform": ["a", 1]}}, "uniform needs [low, high]"),
        ({"lr": {"normal": [0, 1]}}, "'lr.normal': expected one of {grid, choice"),
        ({"lr": 0.1}, "'lr': expected one of"),
        ({"lr": {"grid": [1], "choice": [2]}}, "'lr': expected one of {grid"),
        ({}, "is empty"),
    ],
    ids=[
        "empty-grid",
        "low-above-high",
        "loguniform-zero",
        "loguniform-negative",
        "one-bound",
        "not-a-number",
        "unknown-kind",
        "bare-value",
        "two-kinds",
        "empty-space",
    ],  # fmt: skip
)
def test_a_malformed_space_is_one_line_naming_the_key(data, said):
    with pytest.raises(ValueError) as caught:
        parse_space(data)

    assert said in str(caught.value) and "\n" not in str(caught.value)


def test_an_empty_space_file_is_refused(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("")

    with pytest.raises(ValueError, match="is empty: name at least one key"):
        read_space(path)


def test_trials_must_be_positive():
    assert check_trials(3) == 3
    for bad in (0, -1):
        with pytest.raises(ValueError, match=rf"--trials must be >= 1 \(got {bad}\)"):
            check_trials(bad)
