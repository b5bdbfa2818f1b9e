"""`umedpt-fl dashboard`, and the ``--dashboard HOST:PORT`` option of `server` and `simulate`.

The dashboard is a property of the command's process, not of the federation: it changes
nothing the sites or the ServerApp see, and the ServerApp writes the run-state file it
reads whether or not anyone watches. So ``--dashboard`` is a plain option of the two
commands (served from a thread of theirs, for as long as they run), not a run setting;
`umedpt-fl dashboard --out DIR` serves the same page for a run that another process runs,
or that has ended.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from umedpt_fl.console import BAD_INPUT_ERRORS, console, fail

if TYPE_CHECKING:  # the web server is imported only by a command that serves the page
    from dashboard.app import BackgroundDashboard

DashboardAddress = Annotated[
    str | None,
    typer.Option(
        "--dashboard",
        metavar="HOST:PORT",
        help="Serve a read-only live page of the run on HOST:PORT (e.g. 127.0.0.1:8050); "
        "a host other than loopback needs TLS.",
    ),
]


def start_dashboard(
    address: str | None,
    out: Path,
    *,
    certfile: Path | None = None,
    keyfile: Path | None = None,
) -> BackgroundDashboard | None:
    """Serve ``out``'s page on ``address`` from a thread of this process, or None when not
    asked. The certificate is used only off loopback. DashboardError (a ValueError: bad
    input, exit 2) for a malformed address, a port in use, or a public host without TLS."""
    if not address:
        return None
    from dashboard.app import BackgroundDashboard, DashboardOptions, is_loopback, parse_address

    host, port = parse_address(address)
    public = not is_loopback(host)
    options = DashboardOptions(
        out=out.resolve(), host=host, port=port,
        certfile=certfile if public else None, keyfile=keyfile if public else None,
    )  # fmt: skip
    view = BackgroundDashboard(options).start()
    console.print(f"dashboard: {view.url} (read-only)", highlight=False, soft_wrap=True)
    return view


def dashboard_command(
    out: Annotated[Path, typer.Option(help="The run's output folder (its --out).")],
    host: Annotated[str, typer.Option(help="Address to listen on (default: loopback only).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8050,
    ssl_certfile: Annotated[
        Path | None, typer.Option(help="TLS certificate (needed off loopback).")
    ] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key.")] = None,
) -> None:
    """Serve a read-only page of a running or finished run: its sites, rounds and events.

    The page is rebuilt from OUT/run-state.json on every load and reloads itself while the
    run is running; it starts, stops and changes nothing.
    """
    from dashboard.app import DashboardOptions, bind, serve
    from dashboard.state import check_run_folder

    try:
        check_run_folder(out)
        options = DashboardOptions(
            out=out.resolve(), host=host, port=port, certfile=ssl_certfile, keyfile=ssl_keyfile
        )
        sock = bind(options.host, options.port)
        url = options.url(sock.getsockname()[1])
        console.print(
            f"dashboard of {out}: {url} (read-only; Ctrl-C stops it)",
            highlight=False,
            soft_wrap=True,
        )
        serve(options, sock)
    except BAD_INPUT_ERRORS as exc:
        raise fail(str(exc)) from exc
