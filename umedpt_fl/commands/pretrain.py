"""`umedpt-fl pretrain`: centralized UMedPT multi-task pretraining in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from umedpt.device import Device
from umedpt.tracking import TrackingKind
from umedpt_fl.console import (
    BAD_INPUT_ERRORS,
    PresetName,
    TrackingExperiment,
    TrackingOption,
    TrackingUri,
    console,
    fail,
    metrics_table,
    print_tracking_hint,
    setup_logging,
)


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
    init: Annotated[
        str | None,
        typer.Option(
            help="Warm start: a folder umedpt-fl wrote (global/, checkpoint/, an export) or "
            "timm:<name> (timm's pretrained weights, from this machine's caches); the "
            "encoder and the blocks it holds start from there."
        ),
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
            init=init,
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
