"""`distlab run` children as Ray tasks on a cluster: a sweep's cells (`distlab sweep
--address`), each asking Ray for one CPU per process of its run, run through the same
RunChild as a search's trials (trial.py). The sweep directory must be one every node mounts
at the same path (checked first, cluster.check_shared): a cell's run writes its run
directory on the node that runs it, and the driver reads its summary there and writes the
sweep's record. A cell whose node is lost is run again once elsewhere (Ray retries a task
whose worker died); its record then names the node it last ran on.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from distlab.runs.child import RunChild, RunOutcome, read_summary

POLL_SECONDS = 0.2
# Ray runs a cell again once when its node or worker dies, on whatever node has the CPUs.
CELL_RETRIES = 1


def run_child(config: str, run_dir: str, log: str, cwd: str | None) -> dict[str, Any]:
    """Inside a Ray task: `distlab run` on `config` to its end, into `run_dir`; its outcome
    as plain data, with the node it ran on. A cancelled task (Ctrl-C at the driver) stops
    its run with SIGINT first, so the run records itself."""
    from distlab.experiments.tune.cluster import this_node

    Path(log).parent.mkdir(parents=True, exist_ok=True)
    child = RunChild.start(Path(config), Path(run_dir), Path(log), cwd, overwrite=True)
    try:
        while child.running():
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        child.stop(signal.SIGINT)
    outcome = child.outcome()
    return {
        "status": outcome.status,
        "error": outcome.error,
        "seconds": outcome.seconds,
        "returncode": outcome.returncode,
        **this_node(),
    }


def child_task(ray, processes: int):
    """The Ray task that runs one child, asking for one CPU per process of its run."""
    return ray.remote(run_child).options(num_cpus=processes, max_retries=CELL_RETRIES)


def outcome_of(done: dict[str, Any], run_dir: Path) -> RunOutcome:
    """The driver's RunOutcome of a finished task: the run's own summary, read on the
    shared directory."""
    return RunOutcome(
        done["status"], done["error"], run_dir, done["seconds"], read_summary(run_dir),
        done["returncode"],
    )  # fmt: skip


def failed_outcome(exc: BaseException, run_dir: Path) -> RunOutcome:
    """A task that ended without an outcome (its node lost after the retry, cancelled):
    the run's summary where it wrote one, else failed with the task's one-line cause."""
    summary = read_summary(run_dir)
    cause = " ".join(str(exc).split())[:300] or type(exc).__name__
    status = summary.get("status") or "failed"
    return RunOutcome(status, summary.get("error") or cause, run_dir, 0.0, summary)


def run_cells(plan, cells: list, on_end: Callable, on_start: Callable) -> None:
    """Run `cells` of the sweep `plan` as Ray tasks on the cluster joined by `joined`;
    each ended cell is given to `on_end(cell, outcome, node)`. Ctrl-C and SIGTERM cancel
    the tasks (each stops its run) and go on as the exception."""
    import ray

    from distlab.experiments.tune.cluster import node_label

    root = plan.root.resolve()
    refs = {}
    for cell in cells:
        ref = child_task(ray, cell.processes).remote(*cell_paths(root, cell.name), os.getcwd())
        refs[ref] = cell
        on_start(cell)
    try:
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
            for ref in ready:
                cell = refs.pop(ref)
                outcome, node = collect(ray, ref, root / cell.name)
                on_end(cell, outcome, node and node_label(node["node"], node["host"]))
    except BaseException:
        for ref in refs:
            ray.cancel(ref)
        ray.wait(list(refs), num_returns=len(refs), timeout=10.0)
        raise


@contextmanager
def joined(plan, address: str | None) -> Iterator[None]:
    """The cluster at `address` joined for the length of a sweep (nothing without one),
    checked before the sweep writes anything: every node sees the sweep's directory and one
    node at least has the CPUs of its biggest cell."""
    if address is None:
        yield
        return
    from distlab.experiments.tune.cluster import check_shared, ray_session

    with ray_session(address) as ray:
        check_shared(ray, plan.root.parent.resolve())
        check_cell_cpus(ray, list(plan.cells), address)
        yield


def cell_paths(root: Path, name: str) -> tuple[str, str, str]:
    """A cell's config file, run directory and stderr log, as the sweep lays them out."""
    return (
        str(root / "cells" / f"{name}.json"),
        str(root / name),
        str(root / "logs" / f"{name}.log"),
    )


def collect(ray, ref, run_dir: Path) -> tuple[RunOutcome, dict[str, str] | None]:
    """The ended task's outcome and node (None where the task itself failed)."""
    try:
        done = ray.get(ref)
    except Exception as exc:  # the task's node or worker died past its retry
        return failed_outcome(exc, run_dir), None
    return outcome_of(done, run_dir), {"node": done["node"], "host": done["host"]}


def check_cell_cpus(ray, cells: list, address: str) -> None:
    """A cell's processes share one node: one that needs more CPUs than any node has would
    wait for ever."""
    from distlab.experiments.tune.cluster import largest_node

    cpus = largest_node(ray)
    big = max(cells, key=lambda c: c.processes, default=None)
    if big is not None and big.processes > cpus:
        raise ValueError(
            f"cell {big.name} needs {big.processes} processes (one CPU each) but the largest "
            f"node of the cluster at {address} has {cpus} CPUs: lower its workers"
        )
