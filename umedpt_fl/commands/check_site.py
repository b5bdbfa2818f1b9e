"""`umedpt-fl check-site`: validate a site's config and data before it joins."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from umedpt_fl.console import BAD_INPUT_ERRORS, console, fail, setup_logging


def check_site_command(
    site: Annotated[Path, typer.Argument(help="Site TOML file.")],
    preview: Annotated[
        Path | None, typer.Option(help="Preview PNG path (default: next to the config).")
    ] = None,
    cache: Annotated[
        bool,
        typer.Option(
            "--cache/--no-cache",
            help="Keep the decoded data in the site's state folder (<state_dir>/cache), where "
            "`client` finds it, and read it back while the files are unchanged.",
        ),
    ] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Validate a site's config and data, print a summary and write a preview grid."""
    import json

    from umedpt.config import load_site_config
    from umedpt.data.cache import site_cache_dir
    from umedpt.data.loading import LoadedTask, load_task
    from umedpt.data.preview import summarize, write_preview

    setup_logging(verbose)

    def load_with_progress(task, cache_dir: Path | None) -> LoadedTask:  # a bar while decoding
        with Progress(
            TextColumn(f"[bold]loading {escape(task.name)}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        ) as progress:
            bar = progress.add_task("load", total=None)
            return load_task(
                task,
                cache_dir=cache_dir,
                on_progress=lambda done, total: progress.update(bar, completed=done, total=total),
            )

    try:
        config = load_site_config(site)
        console.print(
            f"site [bold]{config.name}[/] ({config.file}), state folder {config.state_dir}"
        )
        for task in config.tasks:
            loaded = load_with_progress(task, site_cache_dir(config) if cache else None)
            data = loaded.data
            summary = summarize(task, data)
            console.print(f"\n[bold]task {task.name}[/] ({task.type}, {task.format}, {task.path})")
            counts = ", ".join(f"{len(v)} {k}" for k, v in data.splits.items())
            how = "read from the cache" if loaded.from_cache else "loaded"
            console.print(f"{how} {counts} samples in {loaded.seconds:.1f} s", highlight=False)
            console.print_json(json.dumps(summary, default=str))
            if task.format == "dicom":
                _print_dicom_headers(task)
            target = preview or config.file.with_name(f"{config.name}-preview.png")
            if len(config.tasks) > 1:
                target = target.with_name(f"{target.stem}-{task.name}{target.suffix}")
            write_preview(task, data, target)
            console.print(f"preview written to {target}")
    except BAD_INPUT_ERRORS as exc:
        raise fail(str(exc)) from exc
    console.print("\n[green]site OK[/]")


def _print_dicom_headers(task) -> None:
    """Counts per header value, and that identifiers were seen and stayed here (no values)."""
    import json

    from umedpt.data.dicom import header_summary

    headers = header_summary(task)
    seen = headers.pop("identifiers_seen")
    in_paths = headers.pop("paths_naming_identifiers")
    console.print("DICOM headers (files per value):")
    console.print_json(json.dumps(headers, default=str))
    if seen:
        console.print(
            f"identifiers seen ({', '.join(f'{k} in {n} files' for k, n in seen.items())}) "
            "and kept local: none is printed, cached, logged or sent; the split uses a keyed "
            "pseudonym of PatientID/StudyInstanceUID (secret in the state folder)",
            highlight=False,
        )
    if in_paths:
        console.print(
            f"[yellow]warning:[/] {in_paths} file paths contain one of their own identifiers "
            "(e.g. a UID as file name): paths appear in this site's own log and preview "
            "titles; rename the files if that must not happen",
        )
