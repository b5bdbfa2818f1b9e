"""Entry point of the ``umedpt-fl`` command: every command is registered here, explicitly.

A command is a plain function in the module that owns it; this table is the only place
that names them, so a command cannot vanish from ``umedpt-fl --help`` because nobody
imported its module. Flower's telemetry is switched off before anything imports Flower.
"""

from __future__ import annotations

from umedpt_fl.flower_env import disable_flower_telemetry

disable_flower_telemetry()

from collections.abc import Callable  # noqa: E402  (after telemetry is off)
from pathlib import Path  # noqa: E402
from typing import Annotated, Any  # noqa: E402

import typer  # noqa: E402

from client.cli import client_command  # noqa: E402
from server.cli import SITES_COMMANDS, server_command  # noqa: E402
from umedpt import __version__  # noqa: E402
from umedpt.cli import (  # noqa: E402
    check_site_command,
    console,
    demo_data_command,
    export_command,
    fail,
    pretrain_command,
)
from umedpt.evaluation.cli import evaluate_command  # noqa: E402
from umedpt_fl.simulate_command import simulate_command  # noqa: E402

COMMANDS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("simulate", simulate_command),
    ("server", server_command),
    ("client", client_command),
    ("check-site", check_site_command),
    ("pretrain", pretrain_command),
    ("evaluate", evaluate_command),
    ("demo-data", demo_data_command),
    ("export", export_command),
)


# -- `umedpt-fl certs`: the federation's CA, the coordinator's certificate, site keys -----
# Thin wrappers over umedpt_fl.certs; they print paths, never key material.
CertsDir = Annotated[Path, typer.Argument(help="Folder of the federation's CA (ca.crt, ca.key).")]


def certs_init_command(
    folder: CertsDir,
    days: Annotated[int, typer.Option(help="Validity of the CA in days.")] = 3650,
) -> None:
    """Create the federation's certificate authority in FOLDER."""
    from umedpt_fl.certs import CertsError, init_ca

    try:
        issued = init_ca(folder, days=days)
    except (CertsError, OSError) as exc:
        raise fail(str(exc)) from exc
    console.print(f"wrote {issued.cert} (give it to every site: their --root-certificates)")
    console.print(f"wrote {issued.key} (mode 0600; keep it off the network when not signing)")


def certs_coordinator_command(
    folder: CertsDir,
    host: Annotated[
        list[str],
        typer.Option("--host", help="DNS name or IP address sites dial (repeatable)."),
    ],
    days: Annotated[int, typer.Option(help="Validity of the certificate in days.")] = 825,
) -> None:
    """Create the coordinator's TLS certificate, signed by the CA in FOLDER."""
    from umedpt_fl.certs import CertsError, issue_coordinator_cert

    try:
        issued = issue_coordinator_cert(folder, host, days=days)
    except (CertsError, OSError) as exc:
        raise fail(str(exc)) from exc
    console.print(f"wrote {issued.cert} for {', '.join(host)} (umedpt-fl server --ssl-certfile)")
    console.print(f"wrote {issued.key} (mode 0600; umedpt-fl server --ssl-keyfile)")


def certs_site_command(
    folder: Annotated[Path, typer.Argument(help="Folder to write the key pair into.")],
    name: Annotated[str, typer.Argument(help="The site's name, e.g. hospital-a.")],
) -> None:
    """Create a site's key pair for SuperNode authentication (NAME.key, NAME.pub)."""
    from umedpt_fl.certs import CertsError, create_site_keys

    try:
        issued = create_site_keys(folder, name)
    except (CertsError, OSError) as exc:
        raise fail(str(exc)) from exc
    console.print(f"wrote {issued.key} (mode 0600; stays at the site: umedpt-fl client --auth-key)")
    console.print(
        f"wrote {issued.cert} (send it to the coordinator: umedpt-fl sites register "
        f"{issued.cert.name} --out DIR)"
    )


CERTS_COMMANDS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("init", certs_init_command),
    ("coordinator", certs_coordinator_command),
    ("site", certs_site_command),
)

# Command groups: `umedpt-fl GROUP COMMAND ...`.
GROUPS: tuple[tuple[str, str, tuple[tuple[str, Callable[..., Any]], ...]], ...] = (
    ("certs", "Create the federation's CA, the coordinator's certificate and site keys.",
     CERTS_COMMANDS),
    ("sites", "Register, revoke and list the sites a running coordinator accepts.",
     SITES_COMMANDS),
)  # fmt: skip


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"umedpt-fl {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    """The ``umedpt-fl`` Typer app with every command of :data:`COMMANDS`."""
    app = typer.Typer(
        name="umedpt-fl",
        help="Federated multi-site pretraining of a UMedPT medical-imaging encoder.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def main_options(
        version: Annotated[
            bool,
            typer.Option(
                "--version", callback=_print_version, is_eager=True, help="Print the version."
            ),
        ] = False,
    ) -> None:
        """Federated multi-site pretraining of a UMedPT medical-imaging encoder."""

    for name, command in COMMANDS:
        app.command(name)(command)
    for group, help_text, commands in GROUPS:
        sub = typer.Typer(name=group, help=help_text, no_args_is_help=True)
        for name, command in commands:
            sub.command(name)(command)
        app.add_typer(sub, name=group)
    return app


app = build_app()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
