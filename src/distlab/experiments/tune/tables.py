"""The data of a scikit-learn search: features and labels split once (seeded, stratified)
into a training part for the cross-validation and a held-out test part, from a CSV file with
a header and a target column, or from arrays."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Share of a bundled or CSV dataset held out for the test score (distlab's sets have their own).
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Table:
    """Features and labels, split once (seeded, stratified) into train and held-out test."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def read_csv(path: Path, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Numeric feature columns and the target column (any labels) of a CSV with a header."""
    if not path.is_file():
        raise ValueError(f"--csv {str(path)!r}: no such file")
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = (rows[0], rows[1:]) if rows else ([], [])
    if target not in header:
        raise ValueError(f"--target {target!r}: no such column in {path.name} (columns: "
                         f"{', '.join(header) or 'none'})")  # fmt: skip
    if not body:
        raise ValueError(f"--csv {str(path)!r} has no rows under its header")
    at = header.index(target)
    check_csv_body(path, header, body, at)
    labels = np.array([row[at] for row in body])
    features = [[v for i, v in enumerate(row) if i != at] for row in body]
    return np.array(features, dtype=np.float64), labels


def check_csv_body(path: Path, header: list[str], body: list[list[str]], target: int) -> None:
    """Every row has the header's fields and every feature is a number; the first one that
    is not is named by its line, column and value."""
    for line, row in enumerate(body, start=2):  # line 1 is the header
        if len(row) != len(header):
            raise ValueError(
                f"--csv {path.name}: line {line} has {len(row)} fields, the header {len(header)}"
            )
        for i, (column, value) in enumerate(zip(header, row, strict=True)):
            if i != target and not is_float(value):
                raise ValueError(
                    f"--csv {path.name}: column {column!r} holds {value!r} on line {line}; "
                    f"feature columns must be numeric (only --target {header[target]!r} may "
                    "hold labels)"
                )


def is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def split_table(name: str, x: np.ndarray, y: np.ndarray, seed: int) -> Table:
    from sklearn.model_selection import train_test_split

    parts = train_test_split(x, y, test_size=TEST_FRACTION, stratify=y, random_state=seed)
    return Table(name, parts[0], parts[2], parts[1], parts[3])
