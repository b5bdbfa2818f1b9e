"""What every command shares: the console, exit codes, error printing, logging, tables.

Commands are plain functions in :mod:`umedpt_fl.commands`; ``umedpt_fl.cli`` registers
them in one place. Exit codes are the same across commands (:class:`ExitCode`).
"""

from __future__ import annotations

import logging
import sys
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from umedpt.errors import UmedptError
from umedpt.models.presets import PRESETS
from umedpt.tracking import TrackingKind

console = Console()

# The user's input (a file, a flag, data) is at fault: fix it and run again.
BAD_INPUT_ERRORS: tuple[type[BaseException], ...] = (UmedptError, OSError, ValueError)


class ExitCode(IntEnum):
    """One exit code per kind of outcome, for every command."""

    OK = 0
    RUN_FAILED = 1  # the input was fine but the run did not complete
    BAD_INPUT = 2  # a bad flag, site file, data or checkpoint (also typer's usage errors)
    INTERRUPTED = 130  # Ctrl-C


def fail(message: str, code: int = ExitCode.BAD_INPUT) -> typer.Exit:
    """Print ``message`` as an error; raise the result to exit with ``code``."""
    # soft_wrap: never break a path or field name across lines, whatever the terminal width
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(int(code))


PresetName = StrEnum("PresetName", {name: name for name in PRESETS.names()})

# Run tracking, shared by `pretrain`, `simulate` and `server` (see docs/tracking.md).
TrackingOption = Annotated[
    TrackingKind,
    typer.Option(
        "--tracking",
        help="Where scalars go: TensorBoard event files in OUT/tensorboard, an MLflow run "
        "(needs the 'tracking' extra and a tracking URI), or none.",
    ),
]
TrackingUri = Annotated[
    str | None, typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI).")
]
TrackingExperiment = Annotated[str, typer.Option(help="MLflow experiment of the run.")]


def print_tracking_hint(kind: TrackingKind, out: Path) -> None:
    """Say where the run's charts are (TensorBoard: the command that shows them)."""
    from umedpt.tracking import TENSORBOARD_DIR

    if kind == TrackingKind.TENSORBOARD:
        console.print(f"charts: tensorboard --logdir {out / TENSORBOARD_DIR}", highlight=False)
    elif kind == TrackingKind.MLFLOW:
        console.print("charts: in the MLflow run named after the output folder", highlight=False)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Flower's logger has its own console handler; propagating would print it all twice.
    logging.getLogger("flwr").propagate = False


def metrics_table(title: str, metrics: dict[str, dict[str, float]]) -> Table:
    """One row per task, one column per metric name (union over tasks)."""
    table = Table(title=title)
    table.add_column("task")
    names: list[str] = []
    for values in metrics.values():
        names += [n for n in values if n not in names]
    for name in names:
        table.add_column(name, justify="right")
    for task, values in metrics.items():
        table.add_row(task, *[f"{values[n]:.4f}" if n in values else "-" for n in names])
    return table
