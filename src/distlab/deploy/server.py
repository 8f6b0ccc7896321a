"""`distlab deploy server`: a SuperLink, the node keys registered, distlab's app submitted,
the run watched until its ServerApp is done, and the run directory finished like any run's.

Everything that can be checked is checked before a process starts: the config (the same
rules as `distlab run`, with the `flower` executor), the data, the certificates, the node
keys and the ports. The run directory is the same as an in-process run's (config.json,
events, summary.json, model.pt) plus deploy/: the job the ServerApp read, the app bundle's
sources and the SuperLink's log.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from distlab.deploy import processes as P
from distlab.deploy.app import write_app
from distlab.deploy.certs import CertPaths, check_node_pub, check_server_certs
from distlab.deploy.serverapp import DONE_FILE, JOB_FILE
from distlab.resume import reopen_run_dir, resumable_run
from distlab.runs.directory import RunPaths, load_run
from distlab.runs.events import EventTail

# How often the watcher looks at the ServerApp's marker, and asks Flower for the run's state
# (a ServerApp that died before it could write the marker).
POLL_SECONDS = 0.5
STATE_EVERY = 10.0


@dataclass
class ServerOptions:
    """How the server side runs: where the Fleet API listens, TLS and authentication, the
    keys to register and the ServerApp's timeouts."""

    certs: Path | None = None
    keys: list[Path] = field(default_factory=list)
    host: str = "0.0.0.0"
    port: int = P.FLEET_PORT
    control_port: int = P.CONTROL_PORT
    serverappio_port: int = P.SERVERAPPIO_PORT
    insecure: bool = False
    auth: bool = True
    connect_timeout: float = 120.0
    round_timeout: float = 180.0

    def addresses(self) -> P.LinkAddresses:
        return P.LinkAddresses(self.host, self.port, self.control_port, self.serverappio_port)


def deployed_config(data: dict):
    """The run's config with the `flower` executor; ValueError for anything but the
    federated family or for more than one process."""
    from distlab.config import validate_config

    strategy = data.get("strategy") or {"name": "fedavg"}
    if isinstance(strategy, str):
        strategy = {"name": strategy}
    if strategy.get("name", "fedavg") != "fedavg":
        raise ValueError(
            f"distlab deploy runs the federated family (--strategy fedavg, with "
            f"strategy.algorithm and strategy.aggregator); got strategy {strategy['name']!r}"
        )
    if data.get("workers", 1) != 1:
        raise ValueError(
            "--workers does not apply to a deployed run: each client is a SuperNode "
            f"(got --workers {data['workers']})"
        )
    return validate_config(
        {**data, "strategy": {**strategy, "name": "fedavg", "executor": "flower"}}
    )


def check_keys(options: ServerOptions, clients: int) -> list[Path]:
    """The public keys to register: the given ones, else the certs directory's
    client-*.pub; at least one per client when node authentication is on."""
    if not options.auth:
        return []
    keys = list(options.keys)
    if not keys and options.certs is not None:
        keys = CertPaths(Path(options.certs)).client_pubs()
    for key in keys:
        check_node_pub(key)
    if len(keys) < clients:
        raise ValueError(
            f"node authentication needs a public key per client: {len(keys)} key(s) for "
            f"{clients} clients (distlab deploy certs --clients {clients}, or --keys)"
        )
    return keys


@dataclass
class Prepared:
    """A deployed run ready to start: everything checked, the run directory written."""

    cfg: object
    spec: object
    run_dir: Path
    job: Path
    certs: CertPaths | None
    keys: list[Path]
    start: float

    @property
    def work(self) -> Path:
        """Where the Flower processes keep their state and logs: the run's deploy/."""
        return RunPaths(self.run_dir).deploy


def prepare(
    data: dict, options: ServerOptions, overwrite: bool, start: float, resume: Path | None = None
) -> Prepared:
    """Check everything, then write the run directory and the ServerApp's job. `resume` (a
    deployed run's directory) goes on with that run from its newest checkpoint; `data` then
    holds the run's own config with what the flags change."""
    from distlab import api
    from distlab.data.datasets import load_dataset
    from distlab.strategies import get_spec

    cfg = deployed_config(data)
    resumed = None if resume is None else resumable_run(Path(resume), cfg)
    spec = get_spec("fedavg")
    certs = None if options.insecure else check_certs(options.certs)
    keys = check_keys(options, cfg.strategy.clients)
    options.addresses().check_free()
    dataset = load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
    spec.check_data(cfg, dataset)
    split = spec.data_partition(cfg, dataset.y_train.cpu().numpy())
    if resumed is None:
        run_dir = api.prepare(cfg, overwrite, split, None)
    else:
        checkpoint = resumed.checkpoint_for(1)
        shutil.rmtree(RunPaths(resumed.run_dir).deploy, ignore_errors=True)  # the last SuperLink's
        run_dir = reopen_run_dir(resumed.run_dir, checkpoint)
        start -= checkpoint.seconds(0)
    job = write_job(cfg, run_dir, start, options)
    return Prepared(cfg, spec, run_dir, job, certs, keys, start)


def check_certs(root: Path | None) -> CertPaths:
    if root is None:
        raise ValueError(
            "--certs DIR is needed for TLS (make it with distlab deploy certs), or --insecure"
        )
    return check_server_certs(root)


def write_job(cfg, run_dir: Path, start: float, options: ServerOptions) -> Path:
    deploy = RunPaths(run_dir).deploy
    deploy.mkdir(exist_ok=True)
    job = {
        "config": json.loads(cfg.to_json()),
        "run_dir": str(run_dir.resolve()),
        "start": start,
        "settings": {
            "connect_timeout": options.connect_timeout,
            "round_timeout": options.round_timeout,
        },
    }
    path = deploy / JOB_FILE
    path.write_text(json.dumps(job, indent=2))
    return path.resolve()


def open_link(prepared: Prepared, options: ServerOptions, work: Path) -> P.SuperLink:
    """The SuperLink up, the keys registered."""
    link = P.start_superlink(
        work, options.addresses(), prepared.certs, options.insecure, options.auth
    )
    try:
        P.register_nodes(link, prepared.keys)
    except BaseException:
        link.proc.stop()
        raise
    return link


def run_on_link(
    prepared: Prepared, link: P.SuperLink, watch: Callable[[], None] | None = None
) -> None:
    """Submit distlab's app and wait until its ServerApp is done; `watch` is called while
    waiting (the local federation checks its SuperNodes). Raises RunFailed for a failed
    run, DeployError when the SuperLink dies."""
    app_dir = write_app(prepared.work / "app")
    run_id = P.submit(link, app_dir, prepared.job)
    try:
        wait_done(prepared, link, run_id, watch)
    except BaseException:
        P.stop_run(link, run_id)
        raise


def wait_done(prepared: Prepared, link: P.SuperLink, run_id: int, watch) -> None:
    from distlab.runtime.failures import RunFailed

    done = prepared.job.parent / DONE_FILE
    last_state = time.monotonic()
    while not done.exists():
        if not link.proc.alive():
            raise P.DeployError(f"the SuperLink exited: {link.proc.tail()}")
        if watch is not None:
            watch()
        if time.monotonic() - last_state > STATE_EVERY:
            last_state = time.monotonic()
            check_run_state(link, run_id, done)
        time.sleep(POLL_SECONDS)
    if watch is not None:
        watch()  # the last rounds' lines
    result = json.loads(done.read_text())
    if result["status"] != "completed":
        raise RunFailed(f"server failed: {result['error']}", {0: result["error"] or ""})


def check_run_state(link: P.SuperLink, run_id: int, done: Path) -> None:
    """A run Flower reports finished while no marker was written: its ServerApp died."""
    try:
        out = link.flwr("ls", "--run-id", str(run_id), P.CONNECTION, "--format", "json", timeout=30)
    except (P.DeployError, OSError):
        return
    if '"finished:' in out and not done.exists():
        time.sleep(2 * POLL_SECONDS)  # the marker may be on its way
        if not done.exists():
            state = out.split('"finished:', 1)[1].split('"', 1)[0]
            raise P.DeployError(
                f"Flower reports the run finished ({state}) but distlab's "
                "ServerApp wrote no result; see deploy/logs/superlink.log"
            )


def watcher(run_dir: Path, clients: list[P.Managed], say) -> Callable[[], None]:
    """What the command does while it waits: say the run's progress (each round, eval and
    lost client of the ServerApp's events, which go on in another process), and each local
    SuperNode that exits (once)."""
    tail = None if say is None else EventTail(RunPaths(run_dir).rank_events(0), say_event(say))
    gone: set[str] = set()

    def watch() -> None:
        if tail is not None:
            tail.poll()
        for proc in clients:
            if not proc.alive() and proc.name not in gone:
                gone.add(proc.name)
                if say is not None:
                    say(f"{proc.name} exited ({proc.process.returncode})")

    return watch


def say_event(say: Callable[[str], None]) -> Callable[[dict], None]:
    """An event handler that says the events worth a line."""

    def on_event(event: dict) -> None:
        said = event_line(event)
        if said:
            say(said)

    return on_event


def event_line(event: dict) -> str | None:
    kind = event.get("kind")
    if kind == "client" and event.get("status") in ("connected", "refused", "lost"):
        who = f"client {event['client']}" if "client" in event else f"node {event.get('node')}"
        where = f" from {event['address']}" if event.get("address") else ""
        why = f": {event['reason']}" if event.get("reason") else ""
        return f"{who} {event['status']}{where}{why}"
    if kind == "round":
        sampled = event["clients"]
        left_out = {k: event.get(k) or [] for k in ("failed", "rejected")}
        used = len(sampled) - sum(len(c) for c in left_out.values())
        extra = "".join(f", {k} {', '.join(map(str, c))}" for k, c in left_out.items() if c)
        return (
            f"round {event['round']}: loss {event['loss']:.4f}, {used} of {len(sampled)} "
            f"clients, {event['duration']:.1f} s{extra}"
        )
    if kind == "eval" and "round" in event:
        return f"round {event['round']}: test accuracy {event['accuracy']:.4f}"
    return None


def finish(prepared: Prepared, status: str, failure=None) -> None:
    from distlab import api

    api.finish_run(
        prepared.cfg, prepared.spec, prepared.run_dir, 1, prepared.start, status, failure
    )


def serve(
    prepared: Prepared,
    options: ServerOptions,
    start_clients: Callable[[P.SuperLink], list[P.Managed]] | None = None,
    say: Callable[[str], None] | None = None,
):
    """Run a prepared deployment to its end and record it: the SuperLink (and, for a local
    federation, the SuperNodes `start_clients` starts) stopped whatever happens, their
    logs in the run's deploy/logs, summary.json written with the status. Ctrl-C and
    SIGTERM stop it as they stop `distlab run`."""
    from distlab.runtime import launch
    from distlab.runtime.failures import RunFailed

    status, failure, procs = "failed", None, []
    with launch.sigterm_raises():
        try:
            link = open_link(prepared, options, prepared.work)
            procs.append(link.proc)
            if start_clients is not None:
                procs += start_clients(link)
            run_on_link(prepared, link, watcher(prepared.run_dir, procs[1:], say))
            status = "completed"
        except RunFailed as exc:
            failure = exc
            raise
        except P.DeployError as exc:
            failure = RunFailed(str(exc), {0: str(exc)})
            raise failure from None
        except (KeyboardInterrupt, launch.Terminated) as exc:
            stopped = launch.stopped_error(exc, prepared.run_dir)
            status = stopped.status
            raise stopped from None
        finally:
            launch.hold_sigterm()
            for proc in reversed(procs):
                proc.stop()
            finish(prepared, status, failure)
    return load_run(prepared.run_dir)
