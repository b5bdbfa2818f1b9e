"""Entry point of the ``umedpt-fl`` command: every command is registered here, explicitly.

A command is a plain function in the module that owns it; this table is the only place
that names them, so a command cannot vanish from ``umedpt-fl --help`` because nobody
imported its module. Flower's telemetry is switched off before anything imports Flower.
"""

from __future__ import annotations

from federation.entry import enter_command_process

enter_command_process()  # before any command module imports Flower

from collections.abc import Callable
from typing import Annotated, Any

import typer

from umedpt import __version__
from umedpt_fl.commands.certs import CERTS_COMMANDS
from umedpt_fl.commands.check_site import check_site_command
from umedpt_fl.commands.client import client_command
from umedpt_fl.commands.dashboard import dashboard_command
from umedpt_fl.commands.demo_data import demo_data_command
from umedpt_fl.commands.evaluate import evaluate_command
from umedpt_fl.commands.export import export_command
from umedpt_fl.commands.pretrain import pretrain_command
from umedpt_fl.commands.server import server_command
from umedpt_fl.commands.simulate import simulate_command
from umedpt_fl.commands.sites import SITES_COMMANDS

COMMANDS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("simulate", simulate_command),
    ("server", server_command),
    ("client", client_command),
    ("check-site", check_site_command),
    ("pretrain", pretrain_command),
    ("evaluate", evaluate_command),
    ("demo-data", demo_data_command),
    ("export", export_command),
    ("dashboard", dashboard_command),
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
