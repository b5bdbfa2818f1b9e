"""`umedpt-fl demo-data`: write the built-in synthetic federation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from umedpt_fl.console import BAD_INPUT_ERRORS, console, fail


def demo_data_command(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the demo sites into.")],
    seed: Annotated[int, typer.Option(help="Seed; the same seed writes the same files.")] = 0,
) -> None:
    """Write a small synthetic federation (classification, segmentation, detection sites)."""
    from umedpt.data.demo import write_demo_federation

    try:
        configs = write_demo_federation(out_dir, seed=seed)
    except BAD_INPUT_ERRORS as exc:
        raise fail(str(exc)) from exc
    for path in configs:
        console.print(f"wrote site config {path}")
