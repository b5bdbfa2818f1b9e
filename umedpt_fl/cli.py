"""Entry point of the ``umedpt-fl`` command: every command is registered here, explicitly.

A command is a plain function in the module that owns it; this table is the only place
that names them, so a command cannot vanish from ``umedpt-fl --help`` because nobody
imported its module. Flower's telemetry is switched off before anything imports Flower.
"""

from __future__ import annotations

from umedpt_fl.flower_env import disable_flower_telemetry

disable_flower_telemetry()

from collections.abc import Callable  # noqa: E402  (after telemetry is off)
from typing import Annotated, Any  # noqa: E402

import typer  # noqa: E402

from client.cli import client_command  # noqa: E402
from server.cli import server_command  # noqa: E402
from umedpt import __version__  # noqa: E402
from umedpt.cli import check_site_command, demo_data_command, pretrain_command  # noqa: E402
from umedpt_fl.simulate_command import simulate_command  # noqa: E402

COMMANDS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("simulate", simulate_command),
    ("server", server_command),
    ("client", client_command),
    ("check-site", check_site_command),
    ("pretrain", pretrain_command),
    ("demo-data", demo_data_command),
)


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
    return app


app = build_app()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
