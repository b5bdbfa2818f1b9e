"""`umedpt-fl demo-data`: write the built-in synthetic federation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from umedpt_fl.console import BAD_INPUT_ERRORS, console, fail


def demo_data_command(
    out_dir: Annotated[
        Path | None, typer.Argument(help="Folder to write the demo sites into.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="The same folder, as the other commands take it.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed; the same seed writes the same files.")] = 0,
) -> None:
    """Write a small synthetic federation (classification, segmentation, detection sites)."""
    if (out_dir is None) == (out is None):
        raise fail("name the folder once: `demo-data DIR` or `demo-data --out DIR`")
    out_dir = out_dir if out_dir is not None else out
    from umedpt.data.demo import write_demo_federation
    from umedpt.data.demo_dicom import write_dicom_site
    from umedpt.data.demo_nifti import write_nifti_site

    try:
        configs = write_demo_federation(out_dir, seed=seed)
        # Written beside the four, not among simulate's default sites (which stay as they were).
        configs.append(write_dicom_site(out_dir, seed=seed))
        configs.append(write_nifti_site(out_dir, seed=seed))
    except BAD_INPUT_ERRORS as exc:
        raise fail(str(exc)) from exc
    for path in configs:
        console.print(f"wrote site config {path}")
