"""The dashboard's web app and server: the page, its static files, Plotly's bundle, a JSON API
and a stream of server-sent events that pushes the run list and the open run as they change.

It only reads RUNS_DIR. It listens on 127.0.0.1 unless told otherwise; on any other address
every request needs the token (generated unless --token gives one), as `?token=`, an
`Authorization: Bearer` header or the cookie the page gets on its first tokened load.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import ipaddress
import json
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from distlab.dashboard.runs import RunsReader

STATIC = Path(__file__).with_name("static")
POLL_SECONDS = 1.0  # how often a stream looks at the files (a rank flushes every 0.5 s)
PING_SECONDS = 15.0  # a comment line this often keeps proxies from closing an idle stream
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~-]{8,}")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),  # the token in the URL never leaves in a Referer
    (
        b"content-security-policy",
        # Plotly sets inline styles and draws into data: and blob: images; no other origin.
        b"default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
        b"frame-ancestors 'none'",
    ),
]


@dataclass
class Dashboard:
    """A dashboard ready to serve: its app, the bound socket, the URL to open."""

    app: Starlette
    sock: socket.socket
    url: str
    token: str | None


# --- the app ------------------------------------------------------------------------------


def plotly_bundle() -> Path:
    """plotly.min.js from the installed plotly package: the page needs no CDN."""
    spec = importlib.util.find_spec("plotly")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / "package_data" / "plotly.min.js"
        if path.is_file():
            return path
    raise ValueError("the dashboard needs plotly's bundle: pip install 'distlab[dashboard]'")


async def index(request: Request) -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def plotly(request: Request) -> FileResponse:
    return FileResponse(request.app.state.plotly, media_type="text/javascript")


async def runs(request: Request) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(request.app.state.reader.runs))


async def run(request: Request) -> JSONResponse:
    path = request.path_params["path"]
    detail = await run_in_threadpool(request.app.state.reader.detail, path)
    if detail is None:
        return JSONResponse({"error": f"no run {path!r} in RUNS_DIR"}, status_code=404)
    return JSONResponse(detail)


async def stream(request: Request) -> StreamingResponse:
    """Server-sent events: `runs` (the list), `run` (the open run's detail) or `missing`,
    each sent when it differs from what this stream sent last."""
    path = request.query_params.get("run") or None
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    events = follow(request.app.state, path)
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def snapshot(reader: RunsReader, path: str | None) -> list[tuple[str, dict[str, Any]]]:
    """What a stream shows now: the run list and, when a run is open, its detail."""
    shown = [("runs", reader.runs())]
    if path is not None:
        detail = reader.detail(path)
        shown.append(("run", detail) if detail is not None else ("missing", {"path": path}))
    return shown


async def follow(state: Any, path: str | None) -> AsyncIterator[str]:
    sent: dict[str, str] = {}
    quiet_since = time.monotonic()
    while not state.stopping:
        for name, data in await run_in_threadpool(snapshot, state.reader, path):
            # `now` changes on every poll; only a change in the runs themselves is news.
            key = json.dumps({k: v for k, v in data.items() if k != "now"})
            if sent.get(name) != key:
                sent[name] = key
                quiet_since = time.monotonic()
                yield f"event: {name}\ndata: {json.dumps(data)}\n\n"
        if time.monotonic() - quiet_since > PING_SECONDS:
            quiet_since = time.monotonic()
            yield ": ping\n\n"
        await asyncio.sleep(POLL_SECONDS)


def create_app(
    runs_dir: str | Path,
    token: str | None = None,
    loopback: bool = True,
    cookie: str = "distlab_dashboard",
) -> Starlette:
    """The ASGI app over RUNS_DIR; with a token every request must carry it, and on
    loopback a request must name this machine as its Host."""
    routes = [
        Route("/", index),
        Route("/plotly.min.js", plotly),
        Route("/api/runs", runs),
        Route("/api/runs/{path:path}", run),
        Route("/api/stream", stream),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    guard = Middleware(Guard, token=token, loopback=loopback, cookie=cookie)
    app = Starlette(routes=routes, middleware=[guard])
    app.state.reader = RunsReader(runs_dir)
    app.state.plotly = plotly_bundle()
    app.state.stopping = False
    return app


# --- who may ask ---------------------------------------------------------------------------


class Guard:
    """Refuses a request without the token when there is one, and on loopback a request whose
    Host is not this machine (a web page that rebinds its own name to 127.0.0.1 could
    otherwise read the runs). Sets the token cookie when the token came in the query, and the
    security headers on every response."""

    def __init__(self, app: ASGIApp, token: str | None, loopback: bool, cookie: str) -> None:
        self.app, self.token, self.loopback, self.cookie = app, token, loopback, cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if self.loopback and not is_local_host(request.headers.get("host", "")):
            await PlainTextResponse("403: Host must be localhost", 403)(scope, receive, send)
            return
        given, in_query = self.given_token(request)
        if self.token is not None and not same_token(given, self.token):
            text = "401: this dashboard needs its token: open the URL it printed (…/?token=…)"
            reply = PlainTextResponse(text, 401, headers={"WWW-Authenticate": "Bearer"})
            await reply(scope, receive, send)
            return
        extra = list(SECURITY_HEADERS)
        if self.token is not None and in_query:
            cookie = f"{self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict"
            extra.append((b"set-cookie", cookie.encode()))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def given_token(self, request: Request) -> tuple[str | None, bool]:
        """The token the request carries, and whether it came in the query."""
        if "token" in request.query_params:
            return request.query_params["token"], True
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip(), False
        return request.cookies.get(self.cookie), False


def same_token(given: str | None, token: str) -> bool:
    return given is not None and secrets.compare_digest(given.encode(), token.encode())


def is_loopback(host: str) -> bool:
    """localhost or a loopback address; any other name counts as reachable from outside."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_local_host(header: str) -> bool:
    """Whether a Host header (name, optional :port) names this machine's loopback."""
    name = header if header.endswith("]") else header.rpartition(":")[0] or header
    return is_loopback(name)


# --- the server ----------------------------------------------------------------------------


def check_token(token: str | None, loopback: bool) -> str | None:
    """The token to enforce: the given one, a fresh one off loopback, else none."""
    if token is not None and not TOKEN_PATTERN.fullmatch(token):
        raise ValueError(
            "--token must be at least 8 characters of A-Z, a-z, 0-9, '.', '_', '~', '-'"
        )
    if token is None and not loopback:
        return secrets.token_urlsafe(24)
    return token


def open_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; one-line ValueError when the port is taken or the
    host is no address of this machine (checked before uvicorn starts)."""
    if not 1 <= port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535 (got {port})")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError):
        raise ValueError(f"--host {host!r} is not a known address (e.g. 127.0.0.1)") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ValueError(f"--port {port} is in use on {host}: pick another --port") from None
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def open_dashboard(
    runs_dir: str | Path, host: str = "127.0.0.1", port: int = 8050, token: str | None = None
) -> Dashboard:
    """Check the arguments, bind the port and build the app; nothing is served yet."""
    if not Path(runs_dir).is_dir():
        raise ValueError(f"RUNS_DIR {str(runs_dir)!r} is not a directory (a folder of runs)")
    loopback = is_loopback(host)
    token = check_token(token, loopback)
    sock = open_socket(host, port)
    app = create_app(runs_dir, token, loopback, cookie=f"distlab_dashboard_{port}")
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    return Dashboard(app, sock, url, token)


class Server(uvicorn.Server):
    """uvicorn's server, stopped by Ctrl-C or SIGTERM without re-raising the signal: the
    command then ends with status 0. A second Ctrl-C stops it at once."""

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self.dashboard_app = app

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.force_exit = self.should_exit
        self.should_exit = True
        self.dashboard_app.state.stopping = True  # the event streams end


def serve(
    runs_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8050,
    token: str | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the dashboard until Ctrl-C or SIGTERM; `announce(url)` once it listens."""
    board = open_dashboard(runs_dir, host, port, token)
    if announce is not None:
        announce(board.url)
    config = uvicorn.Config(
        board.app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=3,
    )
    Server(config, board.app).run(sockets=[board.sock])
