"""scikit-learn estimators as Ray Tune trials: the estimators and datasets by name, the search
(one trial per configuration, scored by stratified K-fold cross-validation accuracy), the
default hyperparameters beside the best, and the wall time of one search on Ray clusters of
1, 2 and 3 nodes.

Scores follow Kohavi, "A study of cross-validation and bootstrap for accuracy estimation and
model selection" (IJCAI 1995): stratified K-fold, seeded. Ray Tune is Liaw et al., "Tune: A
research platform for distributed model selection and training" (2018).
"""

from __future__ import annotations

import csv
import importlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distlab.experiments.tune.space import Domain, check_trials, grid_size, read_space, to_ray
from distlab.experiments.tune.tables import Table, read_csv, split_table

# name -> (module, class); imported on use so `--help` loads no estimator.
ESTIMATORS = {
    "random-forest": ("sklearn.ensemble", "RandomForestClassifier"),
    "gradient-boosting": ("sklearn.ensemble", "GradientBoostingClassifier"),
    "logistic-regression": ("sklearn.linear_model", "LogisticRegression"),
    "svm": ("sklearn.svm", "SVC"),
    "knn": ("sklearn.neighbors", "KNeighborsClassifier"),
}
# scikit-learn's bundled sets: no download.
BUNDLED = {
    "iris": "load_iris",
    "wine": "load_wine",
    "breast-cancer": "load_breast_cancer",
    "digits": "load_digits",
}
SEARCHES = ("grid", "random")
METRIC = "cv_accuracy"
# Trials a random search draws when --trials is not given.
RANDOM_TRIALS = 10
# Set from --cpus-per-trial so a trial's threads match the CPUs Ray gave it.
RESERVED = ("n_jobs",)


@dataclass(frozen=True)
class Search:
    """What one search runs; it travels to every trial."""

    estimator: str
    space: dict[str, Domain]
    search: str = "grid"
    trials: int | None = None
    cv: int = 5
    seed: int = 0
    cpus: int = 1

    @property
    def samples(self) -> int:
        """Ray's num_samples: grid mode repeats the grid `trials` times (once by default);
        random mode draws `trials` configurations."""
        if self.trials is not None:
            return self.trials
        return 1 if self.search == "grid" else RANDOM_TRIALS

    @property
    def configs(self) -> int:
        return self.samples * (grid_size(self.space) if self.search == "grid" else 1)


def estimator_class(name: str) -> type:
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r} (allowed: {', '.join(ESTIMATORS)})")
    module, cls = ESTIMATORS[name]
    return getattr(importlib.import_module(module), cls)


def build_estimator(search: Search, params: dict[str, Any]):
    """The estimator with `params`, seeded and with n_jobs = the trial's CPUs where it has
    them (a knob it lacks is left alone)."""
    estimator = estimator_class(search.estimator)()
    known = estimator.get_params()
    fixed = {"random_state": search.seed} if "random_state" in known else {}
    if "n_jobs" in known:
        fixed["n_jobs"] = search.cpus
    return estimator.set_params(**{**fixed, **params})


def check_search(search: Search) -> Search:
    """Every rule that needs no data, before Ray starts; one-line ValueErrors."""
    estimator = estimator_class(search.estimator)()
    if search.search not in SEARCHES:
        raise ValueError(f"--search must be one of {', '.join(SEARCHES)} (got {search.search!r})")
    if not search.space:
        raise ValueError("no hyperparameters to search: give --space FILE or --param NAME=V1,V2")
    if search.trials is not None:
        check_trials(search.trials)
    if search.cv < 2:
        raise ValueError(f"--cv must be >= 2 folds (got {search.cv})")
    if search.cpus < 1:
        raise ValueError(f"--cpus-per-trial must be >= 1 (got {search.cpus})")
    allowed = sorted(k for k in estimator.get_params() if k not in RESERVED)
    for name, domain in search.space.items():
        if name in RESERVED:
            raise ValueError(f"{name} is set from --cpus-per-trial; leave it out of the space")
        if name not in allowed:
            raise ValueError(
                f"unknown hyperparameter {name!r} for {search.estimator} "
                f"(allowed: {', '.join(allowed)})"
            )
        check_values(search, name, domain)
    return search


def check_values(search: Search, name: str, domain: Domain) -> None:
    """sklearn's own parameter constraints on every value a trial could get; a range is tried
    at its bounds and, as a float, its middle (an int parameter rejects uniform)."""
    values = list(domain.values)
    if domain.kind in ("uniform", "loguniform"):
        values.append(float(sum(domain.values)) / 2)
    for value in values:
        estimator = build_estimator(search, {name: value})
        if hasattr(estimator, "_validate_params"):
            try:
                estimator._validate_params()
            except ValueError as exc:
                drawn = f" ({domain.kind} draws floats)" if domain.kind.endswith("uniform") else ""
                raise ValueError(f"hyperparameter {name!r}{drawn}: {exc}") from None


def parse_params(flags: list[str] | None) -> dict[str, Domain]:
    """`NAME=V1,V2` flags -> grid dimensions; values are ints, floats, none, true/false or
    strings."""
    space: dict[str, Domain] = {}
    for flag in flags or []:
        name, sep, text = flag.partition("=")
        values = [parse_value(v) for v in text.split(",") if v.strip()]
        if not sep or not name.strip():
            raise ValueError(f"--param must be NAME=V1,V2,... (got {flag!r})")
        if not values:
            raise ValueError(f"--param {name.strip()}: empty grid (give at least one value)")
        space[name.strip()] = Domain("grid", tuple(values))
    return space


def parse_value(text: str) -> Any:
    text = text.strip()
    words = {"none": None, "null": None, "true": True, "false": False}
    if text.lower() in words:
        return words[text.lower()]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def build_space(space_file: Path | None, flags: list[str] | None) -> dict[str, Domain]:
    """The space file's dimensions, then the --param grids (a flag overrides the file)."""
    space = read_space(space_file) if space_file is not None else {}
    return {**space, **parse_params(flags)}


def load_table(dataset: str | None, csv_file: Path | None, target: str | None, seed: int) -> Table:
    """A bundled set, a distlab set flattened, or a CSV with a target column."""
    if csv_file is not None:
        if dataset is not None:
            raise ValueError("give --dataset or --csv, not both")
        if not target:
            raise ValueError("--csv needs --target COLUMN (the column of class labels)")
        x, y = read_csv(csv_file, target)
        return split_table(csv_file.name, x, y, seed)
    if target is not None:
        raise ValueError("--target names a column of --csv FILE; give --csv too")
    dataset = dataset or "iris"
    if dataset in BUNDLED:
        import sklearn.datasets

        x, y = getattr(sklearn.datasets, BUNDLED[dataset])(return_X_y=True)
        return split_table(dataset, x, y, seed)
    return distlab_table(dataset)


def distlab_table(name: str) -> Table:
    from distlab.data.datasets import DATASETS, load_dataset

    if name not in DATASETS:
        allowed = ", ".join([*BUNDLED, *sorted(d for d in DATASETS if d not in BUNDLED)])
        raise ValueError(f"unknown dataset {name!r} (allowed: {allowed}, or --csv FILE)")
    data = load_dataset(name)
    flat = [t.reshape(len(t), -1).numpy() for t in (data.x_train, data.x_test)]
    return Table(name, flat[0], data.y_train.numpy(), flat[1], data.y_test.numpy())


def check_folds(search: Search, table: Table) -> None:
    """Stratified K-fold needs every class at least K times in the training part."""
    _, counts = np.unique(table.y_train, return_counts=True)
    if counts.min() < search.cv:
        raise ValueError(
            f"--cv {search.cv}: the smallest class of {table.name} has {counts.min()} training "
            f"samples; use --cv <= {counts.min()}"
        )


def cv_accuracy(search: Search, params: dict[str, Any], table: Table) -> tuple[float, float]:
    """Mean and standard deviation of the K-fold accuracy on the training part."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = StratifiedKFold(n_splits=search.cv, shuffle=True, random_state=search.seed)
    scores = cross_val_score(build_estimator(search, params), table.x_train, table.y_train,
                             cv=folds)  # fmt: skip
    return float(np.mean(scores)), float(np.std(scores))


def test_accuracy(search: Search, params: dict[str, Any], table: Table) -> float:
    """Fit on the whole training part, score on the held-out test part."""
    estimator = build_estimator(search, params).fit(table.x_train, table.y_train)
    return float(estimator.score(table.x_test, table.y_test))


def fit_trial(config: dict[str, Any], table: Table, search: Search) -> None:
    """One Ray trial: one configuration's cross-validation score."""
    from ray import tune

    start = time.perf_counter()
    mean, std = cv_accuracy(search, config, table)
    tune.report({METRIC: mean, "cv_std": std, "seconds": time.perf_counter() - start})


def param_space(search: Search) -> dict[str, Any]:
    """Ray domains; a random search samples a grid's values instead of trying them all."""
    space = search.space
    if search.search == "random":
        space = {n: Domain("choice", d.values) if d.is_grid else d for n, d in space.items()}
    return to_ray(space)


def run_trials(search: Search, table: Table, storage: Path, name: str) -> list[dict[str, Any]]:
    """The search on the Ray that is up now, one trial per configuration; one row each."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    trainable = tune.with_parameters(fit_trial, table=table, search=search)
    # Seeded, so a random search draws the same configurations on every run and node count.
    variants = BasicVariantGenerator(random_state=search.seed)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": search.cpus}),
        param_space=param_space(search),
        tune_config=tune.TuneConfig(
            num_samples=search.samples, metric=METRIC, mode="max", search_alg=variants
        ),
        run_config=tune.RunConfig(name=name, storage_path=str(storage.resolve()), verbose=0),
    )
    return [trial_row(i, r, search) for i, r in enumerate(tuner.fit())]


def trial_row(index: int, result, search: Search) -> dict[str, Any]:
    params = {k: result.config.get(k) for k in search.space}
    metrics = result.metrics or {}
    return {
        "trial": index,
        **params,
        METRIC: metrics.get(METRIC),
        "cv_std": metrics.get("cv_std"),
        "seconds": metrics.get("seconds"),
        "status": "error" if result.error else "completed",
        "node": metrics.get("node_ip"),  # Tune's own: where the trial ran
        "host": metrics.get("hostname"),
    }


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The highest CV accuracy; the earliest trial wins a tie, so reruns agree."""
    done = [r for r in rows if r.get(METRIC) is not None]
    return max(done, key=lambda r: r[METRIC]) if done else None


@dataclass(frozen=True)
class Outcome:
    """What tune_sklearn leaves: trial rows, best and default scores, scaling rows."""

    out: Path
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    default: dict[str, float] | None
    scaling: list[dict[str, Any]] | None


def parse_nodes(text: str | None) -> list[int] | None:
    """`1,2,3` -> [1, 2, 3]: node counts for the scaling report, each >= 1, 1 included."""
    if text is None:
        return None
    try:
        nodes = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"--scaling must be node counts like 1,2,3 (got {text!r})") from None
    if not nodes or nodes[0] < 1:
        raise ValueError(f"--scaling node counts must be >= 1 (got {text!r})")
    if nodes[0] != 1:
        raise ValueError(f"--scaling needs 1 node for the speedup baseline (got {text!r})")
    return nodes


def tune_sklearn(
    search: Search,
    table: Table,
    out: Path,
    address: str | None = None,
    nodes: list[int] | None = None,
    default: bool = False,
) -> Outcome:
    """Run the search (local Ray, the cluster at `address`, or one Ray cluster per node count)
    and write results.csv, results.md, best.yaml, metric.png and, with nodes, scaling.*."""
    check_run(search, table, address, nodes)
    quiet_ray()
    if nodes is None:
        rows, scaling = search_once(search, table, out, address), None
    else:
        rows, scaling = search_scaling(search, table, out, nodes)
    return finish(search, table, out, rows, scaling, default)


def check_run(search: Search, table: Table, address: str | None, nodes: list[int] | None) -> None:
    """Everything a search needs before it starts: the search, the folds, Ray, the address."""
    from distlab.experiments.tune.cluster import check_address, import_ray

    check_search(search)
    check_folds(search, table)
    if nodes is not None and address is not None:
        raise ValueError("--scaling builds its own local Ray clusters; leave out --address")
    import_ray()
    if address is not None:
        check_address(address)


def quiet_ray() -> None:
    """Tune's console tables are noise here: results.* says it all."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def search_once(search: Search, table: Table, out: Path, address: str | None) -> list[dict]:
    from distlab.experiments.tune.cluster import ray_session

    with ray_session(address):
        return run_trials(search, table, out / "trials", "search")


def search_scaling(
    search: Search, table: Table, out: Path, nodes: list[int]
) -> tuple[list[dict], list[dict[str, Any]]]:
    """The same search on a 1-, 2-, ... node cluster; the wall time of the search alone (not
    the cluster's start). The rows kept are the largest cluster's (seeded: the scores agree)."""
    from distlab.experiments.tune.cluster import local_cluster

    times, rows = {}, []
    for count in nodes:
        with local_cluster(count, cpus_per_node=search.cpus):
            start = time.perf_counter()
            rows = run_trials(search, table, out / "trials", f"nodes-{count}")
            times[count] = time.perf_counter() - start
    return rows, scaling_rows(times)


def scaling_rows(times: dict[int, float]) -> list[dict[str, Any]]:
    """Speedup T(1)/T(N) and efficiency speedup/N per node count."""
    base = times[min(times)]
    return [
        {"nodes": n, "seconds": t, "speedup": base / t, "efficiency": base / t / n}
        for n, t in sorted(times.items())
    ]


def finish(search, table, out, rows, scaling, default) -> Outcome:
    """Test scores of the best (and default) configuration, then every file."""
    from distlab.experiments.tune.results import write_results

    best = best_row(rows)
    if best is not None:
        params = {k: best[k] for k in search.space}
        best = {**best, "params": params, "test_accuracy": test_accuracy(search, params, table)}
    base = default_scores(search, table) if default else None
    write_results(out, rows, METRIC, "max", best_file(search, table, best, base))
    append_scores(out / "results.md", best, base)
    if scaling is not None:
        write_scaling(out, scaling, search.estimator)
    return Outcome(out, rows, best, base, scaling)


def default_scores(search: Search, table: Table) -> dict[str, float]:
    mean, std = cv_accuracy(search, {}, table)
    return {METRIC: mean, "cv_std": std, "test_accuracy": test_accuracy(search, {}, table)}


def best_file(search, table, best, base) -> dict[str, Any] | None:
    """best.yaml: the estimator, data, folds and seed that reproduce the best score."""
    if best is None:
        return None
    scores = {METRIC: best[METRIC], "test_accuracy": best["test_accuracy"]}
    extra = {"default": base} if base is not None else {}
    return {
        "estimator": search.estimator,
        "dataset": table.name,
        "cv": search.cv,
        "seed": search.seed,
        "params": best["params"],
        **scores,
        **extra,
    }


def append_scores(path: Path, best, base) -> None:
    if best is None:
        return
    lines = ["", "| configuration | cv_accuracy | cv_std | test_accuracy |", "|" + " --- |" * 4]
    shown = ", ".join(f"{k}={v}" for k, v in best["params"].items())
    lines.append(f"| best: {shown} | {best[METRIC]:.4f} | {best['cv_std']:.4f} | "
                 f"{best['test_accuracy']:.4f} |")  # fmt: skip
    if base is not None:
        lines.append(f"| default | {base[METRIC]:.4f} | {base['cv_std']:.4f} | "
                     f"{base['test_accuracy']:.4f} |")  # fmt: skip
    with path.open("a") as handle:
        handle.write("\n".join(lines) + "\n")


def write_scaling(out: Path, rows: list[dict[str, Any]], label: str) -> None:
    """scaling.csv, scaling.md and scaling.png (the search's wall time, speedup and
    efficiency against Ray nodes)."""
    columns = ["nodes", "seconds", "speedup", "efficiency"]
    with (out / "scaling.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| nodes | wall s | speedup | efficiency |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['nodes']} | {r['seconds']:.1f} | {r['speedup']:.2f} | "
              f"{r['efficiency']:.2f} |" for r in rows]  # fmt: skip
    (out / "scaling.md").write_text("\n".join(lines) + "\n")
    plot_scaling(rows, label, out / "scaling.png", cores=os.cpu_count())


def plot_scaling(rows: list[dict[str, Any]], label: str, path: Path, cores: int | None) -> Path:
    """What --scaling measured, named as such: the wall time of the whole search (Tune
    running every trial; not the cluster's start) on clusters of 1, 2, ... Ray nodes, each
    node running one trial at a time (its CPUs are a trial's), and its speedup T(1)/T(N)
    and efficiency speedup/N. Nodes past this machine's cores share them: --scaling builds
    every node here."""
    from distlab.plots import new_figure, save_figure

    nodes = [r["nodes"] for r in rows]
    fig = new_figure(13, 4.4)
    wall_ax, speed_ax, eff_ax = fig.subplots(1, 3)
    wall_ax.plot(nodes, [r["seconds"] for r in rows], "o-", color="tab:blue", label=label)
    speed_ax.plot(nodes, [r["speedup"] for r in rows], "o-", color="tab:blue", label=label)
    eff_ax.plot(nodes, [r["efficiency"] for r in rows], "o-", color="tab:blue", label=label)
    speed_ax.plot([1, max(nodes)], [1, max(nodes)], color="0.6", ls=":", label="ideal")
    eff_ax.axhline(1.0, color="0.6", ls=":", label="ideal")
    if cores and cores < max(nodes):
        for ax in (wall_ax, speed_ax, eff_ax):
            ax.axvline(cores, color="tab:red", ls="--", lw=0.8,
                       label=f"{cores} nodes = this machine's {cores} cores")  # fmt: skip
    wall_ax.set(ylabel="wall seconds of the whole search", title="Search wall time")
    speed_ax.set(ylabel="speedup T(1 node) / T(N nodes)", title="Speedup of the search wall time")
    eff_ax.set(ylabel="efficiency (speedup / nodes)", title="Efficiency per node")
    for ax in (wall_ax, speed_ax, eff_ax):
        ax.set(xlabel="Ray nodes (each runs one trial at a time)")
        ax.set_xticks(nodes)
        ax.grid(alpha=0.3)
    speed_ax.legend(fontsize=8)
    fig.suptitle(f"tune-sklearn {label}: the same search on clusters of 1 to {max(nodes)} Ray "
                 "nodes")  # fmt: skip
    return save_figure(fig, path)
