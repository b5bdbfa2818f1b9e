"""The site operator's command: `client` runs this site as a Flower SuperNode."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from umedpt_fl.console import BAD_INPUT_ERRORS, ExitCode, console, fail, setup_logging


def client_command(
    site: Annotated[Path, typer.Option("--site", help="This site's TOML file.")],
    server: Annotated[str, typer.Option(help="The coordinator's SuperLink, HOST:PORT.")],
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plain HTTP (trusted test networks only).")
    ] = False,
    root_certificates: Annotated[
        Path | None, typer.Option(help="The coordinator's CA certificate.")
    ] = None,
    port: Annotated[int, typer.Option(help="Local ClientAppIo port, unique per host.")] = 9094,
    auth_key: Annotated[
        Path | None,
        typer.Option(
            help="This site's private key (SITE.key from `umedpt-fl certs site`), when the "
            "coordinator accepts registered sites only."
        ),
    ] = None,
    trusted_entities: Annotated[
        Path | None,
        typer.Option(
            help="Flower's YAML of trusted app publishers: run only apps signed by them "
            "(Flower Hub signatures; see docs/deployment-security.md)."
        ),
    ] = None,
    isolation: Annotated[
        str,
        typer.Option(
            help="How messages run: 'process', one long-lived ClientApp host that imports "
            "torch and the project once and forks a ready process per message; 'subprocess', "
            "Flower's default, a fresh process and all its imports per message."
        ),
    ] = "process",
    skip_check: Annotated[bool, typer.Option(help="Do not read the data before joining.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Join a federation as this site. Data, heads and local state never leave this machine."""
    from client.supernode import LOG_NAME, SuperNodeOptions, run_supernode
    from federation.processes import FlowerProcessError
    from umedpt.config import load_site_config
    from umedpt.data.cache import site_cache_dir
    from umedpt.data.loading import load_task

    setup_logging(verbose)
    try:
        config = load_site_config(site)
        if not skip_check:  # fail here, with the file named, rather than in round 1
            for task in config.tasks:
                # Through the site's disk cache: round 1 then reads what this check decoded.
                console.print(f"task {task.name}: reading {task.path} ...")
                loaded = load_task(task, cache_dir=site_cache_dir(config))
                counts = {split: len(samples) for split, samples in loaded.data.splits.items()}
                how = "from the cache" if loaded.from_cache else "decoded"
                console.print(f"task {task.name}: {counts} ({how}, {loaded.seconds:.1f} s)")
        options = SuperNodeOptions(
            server=server, site_config=config.file, insecure=insecure,
            root_certificates=root_certificates, port=port, auth_key=auth_key,
            trusted_entities=trusted_entities, isolation=isolation,
        )  # fmt: skip
    except BAD_INPUT_ERRORS as exc:
        raise fail(str(exc)) from exc
    log_file = config.state_dir / LOG_NAME
    console.print(f"site {config.name} joining {server}; local state in {config.state_dir}")
    console.print(f"the SuperNode's output goes to {log_file}")
    try:
        ended = run_supernode(options, log_file=log_file)
    except BAD_INPUT_ERRORS as exc:
        raise fail(str(exc)) from exc
    except FlowerProcessError as exc:  # Flower's tools are not installed here
        raise fail(str(exc), ExitCode.RUN_FAILED) from exc
    if ended.interrupted:
        console.print(f"site {config.name} stopped; restart the same command to rejoin")
        raise typer.Exit(ended.code)
    if ended.code != 0:
        console.print(f"last lines of {log_file}:\n{ended.tail}", highlight=False, markup=False)
        reason = ended.reason or f"the SuperNode exited with code {ended.code}"
        raise fail(f"site {config.name}: {reason}", ExitCode.RUN_FAILED)
