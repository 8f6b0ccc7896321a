"""`distlab deploy local`: a whole federation on this machine, over loopback, with the
same TLS and node authentication as a real deployment.

Fresh certificates and node keys go to a private temporary directory (removed at exit), a
SuperLink and one SuperNode per client start on free loopback ports, the run goes as under
`distlab deploy server`, and every process is stopped at the end, on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from distlab.deploy import processes as P
from distlab.deploy.certs import CertPaths, make_certs
from distlab.deploy.server import ServerOptions, deployed_config, prepare, serve

# Each SuperNode is a process (and a ClientApp process per message): more is a simulation.
MAX_LOCAL_CLIENTS = 32


def local_options(insecure: bool, connect_timeout: float, round_timeout: float) -> ServerOptions:
    """Every API on loopback, on ports free right now."""
    return ServerOptions(
        host=P.LOOPBACK,
        port=P.free_port(),
        control_port=P.free_port(),
        serverappio_port=P.free_port(),
        insecure=insecure,
        auth=not insecure,
        connect_timeout=connect_timeout,
        round_timeout=round_timeout,
    )


def run_local(
    data: dict,
    overwrite: bool,
    start: float,
    insecure: bool = False,
    connect_timeout: float = 120.0,
    round_timeout: float = 180.0,
    say=None,
    resume: Path | None = None,
):
    """Run the config on one local SuperNode per client (strategy.clients); the finished
    RunResult."""
    clients = deployed_config(data).strategy.clients
    if clients > MAX_LOCAL_CLIENTS:
        raise ValueError(
            f"--clients {clients}: a local federation starts a SuperNode process per client; "
            f"at most {MAX_LOCAL_CLIENTS} (simulate more with distlab run --strategy fedavg)"
        )
    options = local_options(insecure, connect_timeout, round_timeout)
    secrets = Path(tempfile.mkdtemp(prefix="distlab-deploy-"))
    try:
        if not insecure:
            options.certs = make_certs(secrets / "certs", ["localhost", P.LOOPBACK], clients).root
        prepared = prepare(data, options, overwrite, start, resume)
        server = f"{P.LOOPBACK}:{options.port}"

        def start_clients(link: P.SuperLink) -> list[P.Managed]:
            return [
                P.start_supernode(
                    prepared.work, server, i, clients,
                    None if insecure else CertPaths(options.certs).client_key(i),
                    link.ca, P.free_port(),
                )
                for i in range(clients)
            ]  # fmt: skip

        return serve(prepared, options, start_clients, say)
    finally:
        shutil.rmtree(secrets, ignore_errors=True)
