"""`distlab tune-sklearn`: scikit-learn estimators searched on a real local Ray, scores checked
against scikit-learn run independently, a 1- and 2-node Ray cluster, and one-line errors."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.neighbors import KNeighborsClassifier
from tests.conftest import cli

from distlab.cli import main

pytest.importorskip("ray.tune", reason="ray is not installed")

SEED = 0


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def independent_scores(model, x, y, cv: int) -> tuple[float, float]:
    """CV accuracy on the seeded stratified train part, and held-out test accuracy: what the
    command should report, computed here by scikit-learn alone."""
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=SEED)
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=SEED)
    mean = float(np.mean(cross_val_score(model, x_tr, y_tr, cv=folds)))
    return mean, float(model.fit(x_tr, y_tr).score(x_te, y_te))


def test_random_forest_search_reports_what_sklearn_computes(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("max_depth: {grid: [2, 4]}\nn_estimators: {grid: [5, 10]}\n")
    out = tmp_path / "rf"

    done = cli("tune-sklearn", "--estimator", "random-forest", "--dataset", "breast-cancer",
               "--space", str(space), "--cv", "5", "--default", "--out", str(out))  # fmt: skip

    assert done.returncode == 0, done.stderr
    for name in ("results.csv", "results.md", "best.yaml", "metric.png"):
        assert (out / name).is_file(), name
    rows = read_rows(out / "results.csv")
    x, y = load_breast_cancer(return_X_y=True)
    assert sorted((int(r["max_depth"]), int(r["n_estimators"])) for r in rows) == [
        (2, 5), (2, 10), (4, 5), (4, 10)]  # fmt: skip
    for row in rows:
        params = {"max_depth": int(row["max_depth"]), "n_estimators": int(row["n_estimators"])}
        model = RandomForestClassifier(random_state=SEED, **params)
        assert row["status"] == "completed"
        assert float(row["cv_accuracy"]) == pytest.approx(independent_scores(model, x, y, 5)[0])
    best = yaml.safe_load((out / "best.yaml").read_text())
    top = max(rows, key=lambda r: float(r["cv_accuracy"]))
    assert best["params"] == {"max_depth": int(top["max_depth"]),
                              "n_estimators": int(top["n_estimators"])}  # fmt: skip
    cv, test = independent_scores(RandomForestClassifier(random_state=SEED, **best["params"]),
                                  x, y, 5)  # fmt: skip
    assert (best["cv_accuracy"], best["test_accuracy"]) == pytest.approx((cv, test))
    cv, test = independent_scores(RandomForestClassifier(random_state=SEED), x, y, 5)
    assert (best["default"]["cv_accuracy"], best["default"]["test_accuracy"]) == pytest.approx(
        (cv, test)
    )
    assert "default" in done.stdout and "best: max_depth=" in done.stdout


def write_iris_csv(path: Path) -> None:
    """Iris with named string labels in a `species` column between the features."""
    data = load_iris()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sepal_l", "sepal_w", "species", "petal_l", "petal_w"])
        for row, label in zip(data.data, data.target, strict=True):
            writer.writerow([*row[:2], data.target_names[label], *row[2:]])


def test_csv_dataset_on_one_and_two_nodes_writes_the_scaling_table(tmp_path):
    data = tmp_path / "iris.csv"
    write_iris_csv(data)
    out = tmp_path / "scale"

    done = cli("tune-sklearn", "--estimator", "knn", "--csv", str(data), "--target", "species",
               "-p", "n_neighbors=1,9", "--cv", "3", "--scaling", "1,2",
               "--out", str(out))  # fmt: skip

    assert done.returncode == 0, done.stderr
    scaling = read_rows(out / "scaling.csv")
    assert [int(r["nodes"]) for r in scaling] == [1, 2]
    assert float(scaling[0]["speedup"]) == 1.0
    for r in scaling:
        assert float(r["seconds"]) > 0
        assert float(r["efficiency"]) == pytest.approx(float(r["speedup"]) / int(r["nodes"]))
    assert (out / "scaling.png").stat().st_size > 0
    assert "| 2 |" in (out / "scaling.md").read_text()
    # The CSV's columns, labels as written, scored by scikit-learn alone.
    x = load_iris().data
    y = load_iris().target_names[load_iris().target]
    for row in read_rows(out / "results.csv"):
        model = KNeighborsClassifier(n_neighbors=int(row["n_neighbors"]))
        assert float(row["cv_accuracy"]) == pytest.approx(independent_scores(model, x, y, 3)[0])
    assert yaml.safe_load((out / "best.yaml").read_text())["dataset"] == "iris.csv"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--estimator", "forest", "-p", "max_depth=2"], "unknown estimator 'forest'"),
        (["-p", "depth=2"], "unknown hyperparameter 'depth' for random-forest"),
        (["-p", "max_depth="], "--param max_depth: empty grid"),
        (["--space", "SPACE"], "'ccp_alpha': low 0.1 > high 0.0"),
        (["-p", "max_depth=2", "--trials", "-1"], "--trials must be >= 1 (got -1)"),
        (["-p", "max_depth=2", "--csv", "CSV", "--target", "label"], "--target 'label'"),
        (["-p", "max_depth=-1"], "'max_depth' parameter of RandomForestClassifier must be"),
        (["-p", "n_jobs=2"], "n_jobs is set from --cpus-per-trial"),
        (["-p", "max_depth=2", "--scaling", "2,3"], "--scaling needs 1 node"),
        (["-p", "max_depth=2", "--address", "127.0.0.1:1"], "no Ray head answers there"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, says):
    space = tmp_path / "bad.yaml"
    space.write_text("ccp_alpha: {uniform: [0.1, 0.0]}\n")
    table = tmp_path / "t.csv"
    table.write_text("a,b,y\n1,2,0\n")
    args = [str(space) if a == "SPACE" else str(table) if a == "CSV" else a for a in args]

    with pytest.raises(SystemExit) as exit_:
        main(["tune-sklearn", *args, "--out", str(tmp_path / "out")])

    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_param_flags_parse_to_grids_and_node_counts_to_speedups():
    from distlab.experiments.tune.sklearn import parse_nodes, parse_params, scaling_rows

    space = parse_params(["max_depth=2,none", "criterion=gini,entropy", "ccp_alpha=0,1e-3"])
    rows = scaling_rows({1: 10.0, 2: 8.0, 3: 5.0})

    assert space["max_depth"].values == (2, None)
    assert space["criterion"].values == ("gini", "entropy")
    assert space["ccp_alpha"].values == (0, 0.001)
    assert parse_nodes("3,1,2") == [1, 2, 3]
    assert [r["speedup"] for r in rows] == pytest.approx([1.0, 1.25, 2.0])
    assert [r["efficiency"] for r in rows] == pytest.approx([1.0, 0.625, 2 / 3])


def test_scaling_png_names_what_it_plots_nodes_and_the_searchs_wall_time(tmp_path, saved_figures):
    from matplotlib.text import Text

    from distlab.experiments.tune.sklearn import scaling_rows, write_scaling

    write_scaling(tmp_path, scaling_rows({1: 12.0, 2: 7.5, 3: 6.0}), "knn")

    (figure,) = saved_figures
    assert figure.axes and all("Ray nodes" in ax.get_xlabel() for ax in figure.axes)
    plotted = {ax.get_ylabel(): [list(line.get_ydata()) for line in ax.get_lines()]
               for ax in figure.axes}  # fmt: skip
    assert [12.0, 7.5, 6.0] in plotted["wall seconds of the whole search"]
    said = " ".join(t.get_text() for t in figure.findobj(Text)).lower()
    assert "worker" not in said and "training time" not in said, said
    assert "search wall time" in said and "nodes" in said, said


def start_ray_head(temp_dir: str) -> int:
    """`ray start --head` on 127.0.0.1 at a free port, its files under temp_dir."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray = Path(sys.executable).with_name("ray")
    subprocess.run([str(ray), "start", "--head", "--port", str(port), "--num-cpus", "2",
                    "--node-ip-address", "127.0.0.1", "--include-dashboard", "false",
                    "--disable-usage-stats", "--temp-dir", temp_dir],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    return port


def stop_ray_head(temp_dir: str, port: int) -> None:
    """End only the processes this head started (they name its temp dir or its port)."""
    import psutil

    def started_here(args: list[str]) -> bool:
        return any(temp_dir in a or a.endswith(f":{port}") for a in args)

    mine = [p for p in psutil.process_iter(["cmdline"]) if started_here(p.info["cmdline"] or [])]
    everything = mine + [c for p in mine for c in p.children(recursive=True)]
    for proc in everything:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(everything, timeout=10)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_address_joins_a_running_ray_head_and_the_trials_run_there(tmp_path):
    import tempfile

    temp_dir = tempfile.mkdtemp(prefix="tsk-", dir="/tmp")  # Ray's socket paths must be short
    port = start_ray_head(temp_dir)
    try:
        done = cli("tune-sklearn", "--estimator", "svm", "--dataset", "iris",
                   "-p", "C=0.1,10", "--address", f"127.0.0.1:{port}",
                   "--out", str(tmp_path / "addr"))  # fmt: skip
        workers = list(Path(temp_dir).glob("session_*/logs/worker-*.out"))
    finally:
        stop_ray_head(temp_dir, port)

    assert done.returncode == 0, done.stderr
    assert [r["status"] for r in read_rows(tmp_path / "addr" / "results.csv")] == ["completed"] * 2
    assert workers, "no Ray worker started on the head the test started"
