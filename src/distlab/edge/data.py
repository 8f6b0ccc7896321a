"""Data for the edge boards: float32 features the boards can hold, labels 0/1.

Two sources. By default sklearn's bundled breast-cancer set (569 cases, 30 features). Given a
directory with a Kaggle-format Titanic `train.csv`, the preprocessing of seed 001's edge project:
impute Age and Fare (training medians) and Embarked (its most common port), encode Sex (male 1)
and Embarked (one-hot C, Q, S), add FamilySize = SibSp + Parch + 1. Both then go through the
same pipeline, fitted on the training split only: standardize, PCA to `components`, standardize
the components (so gradient descent sees unit scales). The split is stratified, fixed-seed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEST_FRACTION = 0.2
TITANIC_COLUMNS = ["PassengerId", "Survived", "Pclass", "Sex", "Age", "SibSp", "Parch", "Fare"]
TITANIC_FEATURES = [
    "Pclass", "Sex", "Age", "SibSp", "Parch", "Fare",
    "Embarked_C", "Embarked_Q", "Embarked_S", "FamilySize",
]  # fmt: skip


@dataclass(frozen=True)
class EdgeData:
    """Preprocessed splits: x float32 (samples, components), y int64 in {0, 1}."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def features(self) -> int:
        return self.x_train.shape[1]


def load_edge_data(data_dir: Path | None = None, components: int = 8, seed: int = 0) -> EdgeData:
    """Titanic from `data_dir`/train.csv if given, else breast-cancer; `components` features."""
    if data_dir is None:
        return load_breast_cancer(components, seed)
    path = Path(data_dir) / "train.csv"
    if not path.is_file():
        raise ValueError(f"--data-dir {data_dir} has no train.csv (Kaggle's Titanic format)")
    return load_titanic(path, components, seed)


def load_breast_cancer(components: int = 8, seed: int = 0) -> EdgeData:
    from sklearn.datasets import load_breast_cancer as sk_breast_cancer

    bunch = sk_breast_cancer()
    return prepare("breast-cancer", bunch.data.astype(np.float64), bunch.target, components, seed)


def load_titanic(path: Path, components: int = 8, seed: int = 0) -> EdgeData:
    rows = read_titanic(path)
    labels = np.array([int(r["Survived"]) for r in rows])
    x_train_rows, x_test_rows, y_train, y_test = split(rows, labels, seed)
    fill = titanic_fill_values(x_train_rows)
    x_train = np.array([titanic_features(r, fill) for r in x_train_rows])
    x_test = np.array([titanic_features(r, fill) for r in x_test_rows])
    return finish("titanic", x_train, y_train, x_test, y_test, components)


def prepare(name: str, x: np.ndarray, y: np.ndarray, components: int, seed: int) -> EdgeData:
    x_train, x_test, y_train, y_test = split(x, y, seed)
    return finish(name, x_train, y_train, x_test, y_test, components)


def split(x, y: np.ndarray, seed: int):
    """Stratified, fixed-seed: (x_train, x_test, y_train, y_test)."""
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=TEST_FRACTION, random_state=seed, stratify=y)


def finish(name, x_train, y_train, x_test, y_test, components: int) -> EdgeData:
    """Standardize, PCA to `components`, standardize again; fitted on the training split."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    limit = min(x_train.shape[1], len(x_train))
    if not 1 <= components <= limit:
        raise ValueError(f"--components must be 1 to {limit} for {name} (got {components})")
    pipe = make_pipeline(StandardScaler(), PCA(components, svd_solver="full"), StandardScaler())
    as32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return EdgeData(
        name,
        as32(pipe.fit_transform(x_train)),
        np.asarray(y_train, dtype=np.int64),
        as32(pipe.transform(x_test)),
        np.asarray(y_test, dtype=np.int64),
    )


def read_titanic(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    need = [c for c in TITANIC_COLUMNS + ["Embarked"] if not rows or c not in rows[0]]
    if need:
        raise ValueError(f"{path} is not Kaggle's Titanic train.csv (missing {', '.join(need)})")
    bad = [r["PassengerId"] for r in rows if r["Survived"] not in ("0", "1")]
    if bad:
        raise ValueError(f"{path}: Survived must be 0 or 1 (passenger {bad[0]})")
    return rows


def titanic_fill_values(rows: list[dict[str, str]]) -> dict[str, float | str]:
    """What replaces a missing Age, Fare or Embarked: the training split's medians and mode."""
    ages = [float(r["Age"]) for r in rows if r["Age"]]
    fares = [float(r["Fare"]) for r in rows if r["Fare"]]
    ports = [r["Embarked"] for r in rows if r["Embarked"]]
    mode = max(sorted(set(ports)), key=ports.count) if ports else "S"
    return {
        "Age": float(np.median(ages)) if ages else 0.0,
        "Fare": float(np.median(fares)) if fares else 0.0,
        "Embarked": mode,
    }


def titanic_features(row: dict[str, str], fill: dict[str, float | str]) -> list[float]:
    """One passenger's TITANIC_FEATURES.

    >>> row = {"Pclass": "3", "Sex": "male", "Age": "", "SibSp": "1", "Parch": "0",
    ...        "Fare": "7.25", "Embarked": ""}
    >>> titanic_features(row, {"Age": 28.0, "Fare": 14.45, "Embarked": "S"})
    [3.0, 1.0, 28.0, 1.0, 0.0, 7.25, 0.0, 0.0, 1.0, 2.0]
    """
    port = row["Embarked"] or fill["Embarked"]
    sibsp, parch = float(row["SibSp"] or 0), float(row["Parch"] or 0)
    return [
        float(row["Pclass"]),
        1.0 if row["Sex"].strip().lower() == "male" else 0.0,
        float(row["Age"]) if row["Age"] else float(fill["Age"]),
        sibsp,
        parch,
        float(row["Fare"]) if row["Fare"] else float(fill["Fare"]),
        float(port == "C"),
        float(port == "Q"),
        float(port == "S"),
        sibsp + parch + 1.0,
    ]


def shards(samples: int, boards: int) -> list[np.ndarray]:
    """Board i's training rows: contiguous, sizes differing by at most one (seed 001's split;
    the training split is already shuffled).

    >>> [s.tolist() for s in shards(7, 3)]
    [[0, 1, 2], [3, 4], [5, 6]]
    """
    if not 1 <= boards <= samples:
        raise ValueError(f"boards must be 1 to {samples} for {samples} samples (got {boards})")
    return np.array_split(np.arange(samples), boards)
