"""The coordinator's command: `server` starts a SuperLink and runs the federation on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from umedpt_fl.commands.dashboard import DashboardAddress, start_dashboard
from umedpt_fl.console import (
    BAD_INPUT_ERRORS,
    ExitCode,
    fail,
    setup_logging,
)
from umedpt_fl.options import RunOptions, Verbose, with_run_settings
from umedpt_fl.run_summary import checked_settings, print_run_end


@with_run_settings("server")
def server_command(
    out: Annotated[
        Path, typer.Option(help="Output folder (report, checkpoints, SuperLink state).")
    ],
    run: RunOptions,
    host: Annotated[str, typer.Option(help="Address the SuperLink listens on.")] = "0.0.0.0",
    port: Annotated[
        int, typer.Option(help="SuperLink port (Fleet, Control and Runtime APIs).")
    ] = 9093,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plain HTTP (trusted test networks only).")
    ] = False,
    ssl_certfile: Annotated[Path | None, typer.Option(help="Server TLS certificate.")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="Server TLS private key.")] = None,
    ssl_ca_certfile: Annotated[Path | None, typer.Option(help="CA certificate.")] = None,
    no_node_auth: Annotated[
        bool,
        typer.Option(
            "--no-node-auth",
            help="Accept any SuperNode that trusts our CA (default with TLS: registered "
            "sites only, see `umedpt-fl sites register`).",
        ),
    ] = False,
    dashboard: DashboardAddress = None,
    verbose: Verbose = False,
) -> None:
    """Start the coordinator (a Flower SuperLink with persistent state) and run the federation.

    Sites reach the Fleet API on --host/--port (through a gateway that serves nothing
    else); the SuperLink and its Control API listen on 127.0.0.1 only.
    """
    from federation.processes import FlowerProcessError
    from server.coordinator import (
        PortTakenError,
        RunInterruptedError,
        SuperLinkOptions,
        coordinate,
    )
    from server.lock import FolderLockedError
    from server.state import RunExistsError

    setup_logging(verbose)
    try:
        options = SuperLinkOptions(
            host=host, port=port, database=(out / "superlink.db").resolve(), insecure=insecure,
            certfile=ssl_certfile, keyfile=ssl_keyfile, ca_certfile=ssl_ca_certfile,
            node_auth=not (insecure or no_node_auth),
        )  # fmt: skip
        settings = checked_settings(run, out_dir=str(out.resolve()))
        start_dashboard(dashboard, out, certfile=ssl_certfile, keyfile=ssl_keyfile)
    except BAD_INPUT_ERRORS as exc:
        raise fail(str(exc)) from exc
    try:
        coordinate(settings, options)
    except (FolderLockedError, PortTakenError, RunExistsError) as exc:
        raise fail(str(exc)) from exc
    except RunInterruptedError as exc:
        raise fail(str(exc), 128 + exc.signum) from exc
    except FlowerProcessError as exc:
        raise fail(str(exc), ExitCode.RUN_FAILED) from exc
    print_run_end(json.loads((out / "report.json").read_text()), settings, out)
