"""The dashboard's web server: one read-only page over a run folder, on Starlette + uvicorn.

The page is built on every request from ``<out>/run-state.json`` alone (:mod:`dashboard.state`),
so the server holds no state of its own and a reader never blocks the round loop. Only
``GET``/``HEAD`` of ``/`` and ``/health`` are served: there is nothing to start, stop or
change. Bound to a loopback address by default; any other address needs a TLS certificate
and key (the coordinator's, as for the gateway: :mod:`server.gateway`), because the page
names the sites and what they spent. TLS keeps the page private on the way; it does not
decide who may open it (put the port behind your network's access rules).

The socket is bound before anything else starts (:func:`bind`), so a port in use is an
error of the command that asked for it, not a failure in a background thread.
"""

from __future__ import annotations

import errno
import ipaddress
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from dashboard.page import render_page, render_waiting
from dashboard.state import STATE_FILE, RunFolderError, read_state
from dashboard.view import page_data

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050
REFRESH_SECONDS = 5
# No script, no frames, nothing from elsewhere: the page is HTML with inline style and SVG.
HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "frame-ancestors 'none'; form-action 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


class DashboardError(ValueError):
    """The dashboard cannot be served as asked (address, port, certificate); says why."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


@dataclass(frozen=True)
class DashboardOptions:
    """Which run folder to show, and where and how to serve it."""

    out: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT  # 0: any free port (tests)
    certfile: Path | None = None
    keyfile: Path | None = None
    refresh: int = REFRESH_SECONDS

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise DashboardError(f"dashboard port {self.port}: must be 1..65535")
        if bool(self.certfile) != bool(self.keyfile):
            raise DashboardError(
                "the dashboard needs both a TLS certificate and its key, or neither"
            )
        if not is_loopback(self.host) and not self.tls:
            raise DashboardError(
                f"the dashboard on {self.host} (not a loopback address) needs TLS: give a "
                "certificate and key (`server`: --ssl-certfile/--ssl-keyfile; or run `umedpt-fl "
                "dashboard --out DIR --host HOST --ssl-certfile ... --ssl-keyfile ...`), or "
                "serve it on 127.0.0.1 and reach it through an SSH tunnel"
            )
        for file in (self.certfile, self.keyfile):
            if file is not None and not Path(file).is_file():
                raise DashboardError(f"{file}: no such file (the dashboard's TLS certificate/key)")

    @property
    def tls(self) -> bool:
        return self.certfile is not None

    def url(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{port or self.port}/"


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8050`` for IPv6) as (host, port); DashboardError if malformed."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise DashboardError(f"--dashboard {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8050")
    return host, int(port)


def create_app(
    out: Path, *, refresh: int = REFRESH_SECONDS, clock: Callable[[], float] = time.time
) -> Starlette:
    """The read-only app over ``out``; the page is rebuilt from the state file per request."""
    out = Path(out)
    source = str(out / STATE_FILE)

    async def page(request: Request) -> Response:
        try:
            state = read_state(out)
        except RunFolderError as exc:
            # A live run writes its first state after its setup: until then, wait politely.
            waiting = not (out / STATE_FILE).exists()
            message = "waiting for the run to write its first state" if waiting else str(exc)
            html = render_waiting(message, refresh=refresh, source=source)
            return HTMLResponse(html, status_code=200 if waiting else 500, headers=HEADERS)
        now = clock()
        html = render_page(page_data(state, now), now=now, refresh=refresh, source=source)
        return HTMLResponse(html, headers=HEADERS)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok", headers=HEADERS)

    return Starlette(routes=[Route("/", page), Route("/health", health)])


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; DashboardError naming the address when it is taken."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise DashboardError(f"dashboard host {host!r}: {exc.strerror}") from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not a port in use
        sock.bind(address)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise DashboardError(
                f"dashboard port {host}:{port} is in use; choose another port"
            ) from exc
        raise DashboardError(f"the dashboard cannot listen on {host}:{port}: {exc}") from exc
    sock.set_inheritable(False)
    return sock


def _server(options: DashboardOptions) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(options.out, refresh=options.refresh),
        ssl_certfile=str(options.certfile) if options.certfile else None,
        ssl_keyfile=str(options.keyfile) if options.keyfile else None,
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=2,
        lifespan="off",
        ws="none",  # a page and nothing else
    )
    config.load()  # here, not in the serving thread: a bad certificate is the caller's error
    return uvicorn.Server(config)


class BackgroundDashboard:
    """The dashboard served from a thread of a command that does other work (server, simulate)."""

    def __init__(self, options: DashboardOptions) -> None:
        self.options = options
        self.socket = bind(options.host, options.port)
        self.port = int(self.socket.getsockname()[1])
        self._server = _server(options)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self.socket]}, daemon=True,
            name="dashboard",
        )  # fmt: skip

    @property
    def url(self) -> str:
        return self.options.url(self.port)

    def start(self, timeout: float = 10.0) -> BackgroundDashboard:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if not self._server.started:
            self.stop()
            raise DashboardError(f"the dashboard did not start on {self.url}")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self.socket.close()

    def __enter__(self) -> BackgroundDashboard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(options: DashboardOptions, sock: socket.socket | None = None) -> None:
    """Serve in the foreground until Ctrl-C/SIGTERM (uvicorn's own handlers); blocks.

    ``sock``: one :func:`bind` gave (so that the caller can say where before it blocks)."""
    sock = sock or bind(options.host, options.port)
    # uvicorn re-raises the signal that stopped it once it has shut down; for this command
    # that signal is the normal way to end, so it lands in a handler that lets it return.
    stopping = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda *_: None) for signum in stopping}
    try:
        _server(options).run(sockets=[sock])
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sock.close()
