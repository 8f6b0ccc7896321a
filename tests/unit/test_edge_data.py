"""Data for the edge boards: breast-cancer by default, Kaggle Titanic preprocessing, shards."""

from __future__ import annotations

import numpy as np
import pytest

from distlab.edge import data as edge_data
from distlab.edge.data import load_edge_data, shards, titanic_features, titanic_fill_values

HEADER = "PassengerId,Survived,Pclass,Name,Sex,Age,SibSp,Parch,Ticket,Fare,Cabin,Embarked"


def titanic_csv(path, rows: int = 40):
    """A Kaggle-format train.csv: quoted names with commas, gaps in Age, Fare and Embarked."""
    rng = np.random.default_rng(0)
    lines = [HEADER]
    for i in range(rows):
        survived = i % 2
        age = "" if i % 7 == 0 else f"{20 + i % 30}"
        fare = "" if i == 3 else f"{7.25 + i:.2f}"
        port = "" if i == 5 else "SCQ"[i % 3]
        sex = "female" if survived else "male"
        lines.append(
            f'{i + 1},{survived},{1 + i % 3},"Doe, Mr. John {i}",{sex},{age},{i % 2},'
            f"{int(rng.integers(0, 3))},A/5 {i},{fare},,{port}"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_breast_cancer_is_the_default():
    d = load_edge_data(components=6)

    assert d.name == "breast-cancer"
    assert d.x_train.shape == (455, 6) and d.x_test.shape == (114, 6)
    assert d.x_train.dtype == np.float32 and set(np.unique(d.y_train)) == {0, 1}
    # Components standardized on the training split.
    assert np.allclose(d.x_train.mean(axis=0), 0, atol=1e-5)
    assert np.allclose(d.x_train.std(axis=0), 1, atol=1e-4)
    # Stratified: both splits keep the set's 37% malignant share.
    assert abs(d.y_train.mean() - d.y_test.mean()) < 0.01


def test_the_split_is_fixed_by_the_seed():
    a, b, c = load_edge_data(components=4), load_edge_data(components=4), load_edge_data(None, 4, 1)

    assert np.array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.y_train, c.y_train)


def test_titanic_features_by_hand():
    row = {"Pclass": "1", "Sex": "female", "Age": "38", "SibSp": "1", "Parch": "2",
           "Fare": "", "Embarked": "C"}  # fmt: skip

    got = titanic_features(row, {"Age": 28.0, "Fare": 14.45, "Embarked": "S"})

    # Pclass, Sex, Age, SibSp, Parch, Fare (imputed), C, Q, S, FamilySize = 1 + 2 + 1
    assert got == [1.0, 0.0, 38.0, 1.0, 2.0, 14.45, 1.0, 0.0, 0.0, 4.0]


def test_fill_values_are_medians_and_the_mode():
    rows = [
        {"Age": "10", "Fare": "5", "Embarked": "Q"},
        {"Age": "", "Fare": "7", "Embarked": "Q"},
        {"Age": "30", "Fare": "", "Embarked": "S"},
    ]

    assert titanic_fill_values(rows) == {"Age": 20.0, "Fare": 6.0, "Embarked": "Q"}


def test_titanic_from_a_kaggle_train_csv(tmp_path):
    titanic_csv(tmp_path / "train.csv")

    d = load_edge_data(tmp_path, components=5)

    assert d.name == "titanic"
    assert d.x_train.shape == (32, 5) and d.x_test.shape == (8, 5)
    assert np.isfinite(d.x_train).all() and np.isfinite(d.x_test).all()


def test_bad_data_is_named(tmp_path):
    with pytest.raises(ValueError, match="has no train.csv"):
        load_edge_data(tmp_path, 4)
    (tmp_path / "train.csv").write_text("PassengerId,Name\n1,x\n")
    with pytest.raises(ValueError, match="missing Survived"):
        load_edge_data(tmp_path, 4)
    titanic_csv(tmp_path / "train.csv")
    with pytest.raises(ValueError, match="--components must be 1 to 10 for titanic"):
        load_edge_data(tmp_path, 11)
    with pytest.raises(ValueError, match="--components must be 1 to 30 for breast-cancer"):
        load_edge_data(None, 31)


def test_shards_are_contiguous_and_even():
    parts = shards(455, 3)

    assert [len(p) for p in parts] == [152, 152, 151]
    assert np.array_equal(np.concatenate(parts), np.arange(455))
    with pytest.raises(ValueError, match="boards must be 1 to 2"):
        shards(2, 3)


def test_feature_names_match_the_features():
    assert len(edge_data.TITANIC_FEATURES) == 10
