"""The ServerApp of a deployed distlab run: Flower starts it on the server's machine.

`distlab deploy server` prepares the run directory and writes deploy/job.json in it (the
validated config, the run directory, when the command started, the timeouts), then submits
the app with the job's path in the run config. This process runs the run's single rank
exactly as distlab's other launchers do (run_worker: seeded, warmed up, recorded), with the
Grid Flower hands it in the context's `shared` slot, where fedavg's `flower` executor finds
it. Whatever the outcome it writes deploy/server-done.json, which the command waits for.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from distlab.runs.directory import RunPaths

JOB_FILE = "job.json"
DONE_FILE = "server-done.json"


def run_server(grid, context) -> None:
    """Flower's entry point: the job named in the run config, run to completion."""
    job_path = Path(str(context.run_config["job"]))
    job = json.loads(job_path.read_text())
    paths = RunPaths(Path(job["run_dir"]))
    status, error = "failed", None
    try:
        run_job(grid, job, paths)
        status = "completed"
    except Exception as exc:  # recorded for the command, which reports it in one line
        from distlab.runtime.failures import first_line, write_error

        write_error(paths, 0, exc)
        error = first_line(exc)
        raise
    finally:
        done = {"status": status, "error": error, "finished": time.time()}
        (job_path.parent / DONE_FILE).write_text(json.dumps(done))


def run_job(grid, job: dict, paths: RunPaths) -> None:
    """The run's single rank, under the Grid Flower handed the ServerApp."""
    import torch

    from distlab.config import validate_config
    from distlab.federated.flower import FlowerSettings
    from distlab.runtime.comm import SoloCommunicator
    from distlab.runtime.worker import Job, RankSetup, run_worker, thread_count
    from distlab.strategies import spec_ref

    cfg = validate_config(job["config"])
    torch.set_num_threads(thread_count(cfg, 1))
    settings = FlowerSettings(cfg.strategy.clients, **job["settings"])
    shared = {"grid": grid, "flower": settings}
    entry = Job(spec_ref(cfg.strategy.name), ("server",), 0, RunPaths)
    setup = RankSetup(0, paths, job["start"], comm=SoloCommunicator(), shared=shared)
    run_worker(cfg, entry, setup)


def make_app():
    from flwr.serverapp import ServerApp

    app = ServerApp()
    app.main()(run_server)
    return app
