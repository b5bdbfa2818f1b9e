"""`umedpt-fl sites`: who may join, told to the running coordinator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from umedpt_fl.console import BAD_INPUT_ERRORS, console, fail

# -- `umedpt-fl sites`: who may join, told to the running coordinator ---------------------
OutOption = Annotated[
    Path, typer.Option("--out", help="The running coordinator's output folder (its --out).")
]


def _site_errors():  # the errors of the site commands, imported when a command runs
    from server.site_registry import NoCoordinatorError, SiteRegistryError

    return (NoCoordinatorError, SiteRegistryError, *BAD_INPUT_ERRORS)


def register_site_command(
    public_key: Annotated[Path, typer.Argument(help="The site's SITE.pub (OpenSSH ECDSA).")],
    out: OutOption,
    name: Annotated[
        str | None, typer.Option(help="Site name (default: the key's comment or file name).")
    ] = None,
) -> None:
    """Allow a site to join: register its public key with the running coordinator."""
    from server.site_registry import register_site

    try:
        site, node_id = register_site(out, public_key, name)
    except _site_errors() as exc:
        raise fail(str(exc)) from exc
    console.print(f"registered site {site} (node {node_id}); it can now join with its key")


def revoke_site_command(
    site: Annotated[str, typer.Argument(help="Site name, node ID, or the site's SITE.pub.")],
    out: OutOption,
) -> None:
    """Revoke a site: unregister it; a connected site is cut off at its next call."""
    from server.site_registry import revoke_site

    try:
        name, node_id = revoke_site(out, site)
    except _site_errors() as exc:
        raise fail(str(exc)) from exc
    console.print(f"revoked site {name} (node {node_id})")


def list_sites_command(out: OutOption) -> None:
    """List the sites registered with the running coordinator and their status."""
    from server.site_registry import list_sites

    try:
        nodes = list_sites(out)
    except _site_errors() as exc:
        raise fail(str(exc)) from exc
    table = Table(title="sites")
    for column in ("name", "node-id", "status"):
        table.add_column(column)
    for node in nodes:
        table.add_row(node["name"], node["node-id"], node["status"])
    console.print(table)


SITES_COMMANDS = (
    ("register", register_site_command),
    ("revoke", revoke_site_command),
    ("list", list_sites_command),
)
