"""`distlab deploy certs | server | client | local`: federated learning on Flower's
deployment engine."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from distlab.cli.display import print_result, say
from distlab.cli.flags import SET, config_data, with_config_flags
from distlab.deploy import DEPLOY_LOCAL_CLIENTS, DEPLOY_STRATEGY

commands = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Federated learning on Flower's deployment engine: a server and clients that are "
    "separate programs, on one machine or many (TLS and node authentication on).",
)

DEPLOY_EPILOG = "Every flag of `distlab run` (see distlab run --help) sets the config."


@commands.command("certs")
def deploy_certs(
    out: Path = typer.Option(..., "--out", help="Directory for the CA, server and node keys."),
    server_names: str = typer.Option(
        "localhost,127.0.0.1",
        "--server-names",
        help="The server's host names and IP addresses, comma-separated (its certificate's "
        "subject alternative names): every name clients will use in --server "
        "(127.0.0.1 is always added: the server reaches its own Control API there).",
    ),
    clients: int = typer.Option(3, help="Node key pairs to make (client-0 ... client-N-1)."),
    force: bool = typer.Option(False, help="Replace existing material in --out."),
) -> None:
    """Make a CA, a server certificate and one key pair per client.

    Example: distlab deploy certs --out certs --server-names server.lan,10.0.0.5 --clients 2

    Keep ca.key and server.key on the server; copy ca.pem and client-I.key to client I.
    """
    from distlab.deploy.certs import make_certs, parse_server_names

    paths = make_certs(out, parse_server_names(server_names), clients, force)
    print(f"wrote {paths.root}: ca.pem, server.pem/.key, client-0..{clients - 1}.key/.pub")


@commands.command("server", epilog=DEPLOY_EPILOG)
@with_config_flags(defaults={"strategy": DEPLOY_STRATEGY})
def deploy_server(
    certs: Path = typer.Option(None, help="Directory from distlab deploy certs (TLS)."),
    keys: list[Path] = typer.Option(
        None, "--keys", help="Node public keys to register [default: CERTS/client-*.pub]."
    ),
    host: str = typer.Option("0.0.0.0", help="Address of the Fleet API (clients connect)."),
    port: int = typer.Option(9092, help="Port of the Fleet API."),
    control_port: int = typer.Option(9093, help="Port of the Control API (127.0.0.1 only)."),
    serverappio_port: int = typer.Option(
        9091, help="Port of the ServerAppIo API (127.0.0.1 only)."
    ),
    insecure: bool = typer.Option(False, help="No TLS and no node authentication (unsafe)."),
    connect_timeout: float = typer.Option(300, help="Seconds to wait for every client."),
    round_timeout: float = typer.Option(180, help="Seconds to wait for a round's replies."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    resume: Path = typer.Option(
        None, "--resume", help="Go on with this deployed run from its newest checkpoint."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json to stdout."),
    *,
    flags: dict[str, Any],
    set_: list[str] = SET,
) -> None:
    """Start a SuperLink and run a federated config on the clients that join it.

    Example: distlab deploy server --certs certs --clients 2 --rounds 5

    Each client runs: distlab deploy client --server HOST:9092 --ca ca.pem --key
    client-I.key --partition-id I --num-partitions 2
    """
    from distlab.deploy.server import ServerOptions, prepare, serve
    from distlab.runtime.environ import launched

    check_timeouts(connect_timeout, round_timeout)
    options = ServerOptions(
        certs, list(keys or []), host, port, control_port, serverappio_port, insecure,
        not insecure, connect_timeout, round_timeout,
    )  # fmt: skip
    data = deploy_data(flags, resume, set_)
    if insecure:
        loud_warning()
    prepared = prepare(data, options, overwrite, launched(), resume)
    news = None if as_json else say
    if news is not None:
        news(f"SuperLink on {host}:{port}; waiting for {prepared.cfg.strategy.clients} clients")
    result = serve(prepared, options, None, news)
    print_result(result.summary, result.run_dir, as_json)


@commands.command("client")
def deploy_client(
    server: str = typer.Option(..., help="The server's Fleet API, HOST:PORT."),
    partition_id: int = typer.Option(..., "--partition-id", help="This client's id, 0..K-1."),
    num_partitions: int = typer.Option(..., "--num-partitions", help="K, the server's clients."),
    key: Path = typer.Option(None, help="This node's private key (client-I.key)."),
    ca: Path = typer.Option(None, help="The server's CA certificate (ca.pem)."),
    insecure: bool = typer.Option(False, help="No TLS (only for a server started insecure)."),
    data_dir: Path = typer.Option(None, help="Read the dataset's files from here."),
    local_data: bool = typer.Option(
        False,
        help="Train on every training sample in --data-dir (this site's own data) "
        "instead of partition I of the shared dataset.",
    ),
    threads: int = typer.Option(1, help="torch threads of the client's training."),
    port: int = typer.Option(9094, help="Local port of the ClientAppIo API (127.0.0.1)."),
    join_timeout: float = typer.Option(60, help="Seconds to wait until the server accepts."),
    work_dir: Path = typer.Option(Path(".distlab-client"), help="Where the node's log goes."),
) -> None:
    """Start a SuperNode that trains one client of a deployed run.

    Example: distlab deploy client --server 10.0.0.5:9092 --ca ca.pem --key client-0.key
    --partition-id 0 --num-partitions 2
    """
    from distlab.deploy.client import ClientOptions, run_client

    if join_timeout <= 0:
        raise ValueError(f"--join-timeout must be > 0 (got {join_timeout})")
    options = ClientOptions(
        server, partition_id, num_partitions, key, ca, insecure, data_dir, local_data,
        threads, port, join_timeout, work_dir,
    )  # fmt: skip
    run_client(options, say)


@commands.command("local", epilog=DEPLOY_EPILOG)
@with_config_flags(defaults={"strategy": DEPLOY_STRATEGY, "clients": str(DEPLOY_LOCAL_CLIENTS)})
def deploy_local(
    insecure: bool = typer.Option(False, help="No TLS and no node authentication."),
    connect_timeout: float = typer.Option(120, help="Seconds to wait for every client."),
    round_timeout: float = typer.Option(180, help="Seconds to wait for a round's replies."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    resume: Path = typer.Option(
        None, "--resume", help="Go on with this deployed run from its newest checkpoint."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json to stdout."),
    *,
    flags: dict[str, Any],
    set_: list[str] = SET,
) -> None:
    """A whole federation on this machine: certificates, a SuperLink and one SuperNode per
    client (--clients, default 3) over loopback, the run, and everything stopped at the end.

    Example: distlab deploy local --clients 3 --rounds 3 --out-dir runs --name flower
    """
    from distlab.deploy.local import run_local
    from distlab.runtime.environ import launched

    check_timeouts(connect_timeout, round_timeout)
    data = deploy_data(flags, resume, set_)
    strategy = (
        data["strategy"] if isinstance(data["strategy"], dict) else {"name": data["strategy"]}
    )
    strategy.setdefault("clients", DEPLOY_LOCAL_CLIENTS)
    data["strategy"] = strategy
    if insecure:
        loud_warning()
    news = None if as_json else say
    result = run_local(
        data, overwrite, launched(), insecure, connect_timeout, round_timeout, news, resume
    )
    print_result(result.summary, result.run_dir, as_json)


def deploy_data(flags: dict, resume: Path | None, overrides: list[str] | None = None) -> dict:
    """A deployed run's config mapping: the flags' (fedavg unless they say otherwise), or,
    with --resume, the run's own with what the flags change."""
    from distlab.config import merge
    from distlab.runs.directory import RunPaths, read_json

    data = config_data(flags, overrides)
    if resume is None:
        data.setdefault("strategy", DEPLOY_STRATEGY)
        return data
    config = RunPaths(resume).config
    if not config.is_file():
        raise ValueError(f"--resume: {str(resume)!r} is not a run directory (no {config.name})")
    return merge(read_json(config), data)


def check_timeouts(connect: float, round_: float) -> None:
    for flag, value in (("--connect-timeout", connect), ("--round-timeout", round_)):
        if not value > 0:
            raise ValueError(f"{flag} must be > 0 (got {value})")


def loud_warning() -> None:
    """Three lines on stderr that --insecure is no protection at all."""
    for line in (
        "WARNING: --insecure: no TLS and no node authentication. Anyone who can reach the",
        "WARNING: Fleet port can read the model and join as a client. Use only on a network",
        "WARNING: you trust, never on the internet.",
    ):
        print(line, file=sys.stderr)
