"""`umedpt-fl export`: the encoder as a timm folder with its model card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from umedpt_fl.console import BAD_INPUT_ERRORS, ExitCode, console, fail, setup_logging


def export_command(
    checkpoint: Annotated[
        Path,
        typer.Argument(help="Checkpoint folder (a federation's global/, pretrain's checkpoint/)."),
    ],
    out: Annotated[Path, typer.Option(help="Folder to write the timm encoder and its card into.")],
    report: Annotated[
        Path | None,
        typer.Option(help="The run's report.json (default: beside a federation's global/)."),
    ] = None,
    evaluation: Annotated[
        list[Path] | None,
        typer.Option("--evaluation", help="A `umedpt-fl evaluate` output folder (repeatable)."),
    ] = None,
    image_size: Annotated[
        int | None, typer.Option(help="Input side in pixels (default: from the checkpoint).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Export the encoder in timm's folder format (local-dir:) with a model card."""
    from umedpt.export.exporter import export_checkpoint
    from umedpt.export.timm_folder import ExportMismatchError

    setup_logging(verbose)
    try:
        result = export_checkpoint(
            checkpoint, out, report=report, evaluations=evaluation or (), image_size=image_size
        )
    except BAD_INPUT_ERRORS as exc:
        raise fail(str(exc)) from exc
    except ExportMismatchError as exc:
        raise fail(str(exc), ExitCode.RUN_FAILED) from exc
    console.print(f"wrote {result.folder} ({result.timm.architecture}, checked feature maps)")
    console.print(
        f'load it: timm.create_model("local-dir:{result.folder}", pretrained=True, '
        "features_only=True)"
    )
    for fact in result.card["unknown"]:
        console.print(f"[yellow]unknown, and said so on the card:[/] {escape(fact)}")
