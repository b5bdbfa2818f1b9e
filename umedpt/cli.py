"""The ML core's commands (demo-data, pretrain, check-site) and what every command shares.

Commands are plain functions; ``umedpt_fl.cli`` registers them, and the federation's
commands, in one place. Exit codes are the same across commands (:class:`ExitCode`).
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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from umedpt.device import Device
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


def pretrain_command(
    site: Annotated[list[Path], typer.Option("--site", help="Site TOML file (repeatable).")],
    out: Annotated[Path, typer.Option(help="Output folder for checkpoints and metrics.")],
    steps: Annotated[
        int | None, typer.Option(help="Total multi-task steps (overrides --epochs).")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Epochs (the longest task seen once each).")] = 3,
    preset: Annotated[PresetName, typer.Option(help="Model preset.")] = "tiny",  # type: ignore[assignment]
    encoder: Annotated[
        str | None, typer.Option(help="Any timm encoder name (overrides the preset's).")
    ] = None,
    device: Annotated[Device, typer.Option(help="Where to train.")] = Device.AUTO,
    seed: Annotated[int, typer.Option(help="Seed for weights and data order.")] = 0,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: the preset's).")] = None,
    eval_every: Annotated[
        int | None, typer.Option(help="Steps between validations (default: one epoch).")
    ] = None,
    tracking: TrackingOption = TrackingKind.TENSORBOARD,
    tracking_uri: TrackingUri = None,
    tracking_experiment: TrackingExperiment = "umedpt-fl",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Centralized UMedPT multi-task pretraining of all listed sites' tasks in one process."""
    from umedpt.config import load_site_config
    from umedpt.pretrain import PretrainConfig, pretrain
    from umedpt.tracking import TrackingConfig, check_tracking

    setup_logging(verbose)
    try:
        tracking_config = TrackingConfig(
            kind=tracking.value,
            uri=tracking_uri or "",
            experiment=tracking_experiment,
            run_name=out.resolve().name,
        )
        check_tracking(tracking_config)
        sites = [load_site_config(p) for p in site]
        config = PretrainConfig(
            preset=str(preset),
            encoder=encoder,
            epochs=epochs,
            steps=steps,
            eval_every=eval_every,
            seed=seed,
            device=str(device),
            lr=lr,
        )
        with Progress(
            TextColumn("[bold]pretrain"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[losses]}"),
            console=console,
            transient=False,
        ) as progress:
            bar = progress.add_task("train", total=None, losses="")

            def on_progress(step: int, total: int, losses: dict[str, float]) -> None:
                text = "  ".join(f"{k}={v:.3f}" for k, v in losses.items())
                progress.update(bar, completed=step, total=total, losses=text)

            def on_eval(entry: dict) -> None:
                progress.console.print(
                    metrics_table(
                        f"validation after step {entry['step']} (epoch {entry['epoch']:.2f})",
                        entry["val"],
                    )
                )

            result = pretrain(
                sites,
                config,
                out,
                on_progress=on_progress,
                on_eval=on_eval,
                tracking=tracking_config,
            )
    except BAD_INPUT_ERRORS as exc:
        raise fail(str(exc)) from exc
    console.print(
        f"done: {result.steps} steps in {result.seconds:.1f} s; checkpoint in {out / 'checkpoint'}"
    )
    print_tracking_hint(tracking, out)


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
            target = preview or config.file.with_name(f"{config.name}-preview.png")
            if len(config.tasks) > 1:
                target = target.with_name(f"{target.stem}-{task.name}{target.suffix}")
            write_preview(task, data, target)
            console.print(f"preview written to {target}")
    except BAD_INPUT_ERRORS as exc:
        raise fail(str(exc)) from exc
    console.print("\n[green]site OK[/]")


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
