"""`umedpt-fl certs`: the federation's CA, the coordinator's certificate, site keys.

Thin wrappers over :mod:`federation.certs`; they print paths, never key material.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from umedpt_fl.console import console, fail

# -- `umedpt-fl certs`: the federation's CA, the coordinator's certificate, site keys -----
# Thin wrappers over federation.certs; they print paths, never key material.
CertsDir = Annotated[Path, typer.Argument(help="Folder of the federation's CA (ca.crt, ca.key).")]


def certs_init_command(
    folder: CertsDir,
    days: Annotated[int, typer.Option(help="Validity of the CA in days.")] = 3650,
) -> None:
    """Create the federation's certificate authority in FOLDER."""
    from federation.certs import CertsError, init_ca

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
    from federation.certs import CertsError, issue_coordinator_cert

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
    from federation.certs import CertsError, create_site_keys

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
