"""``umedpt-fl evaluate``: the data-efficiency comparison of encoders on a target task."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from umedpt.device import Device
from umedpt_fl.console import BAD_INPUT_ERRORS, PresetName, console, fail, setup_logging


class ModeChoice(StrEnum):
    FROZEN = "frozen"
    FINETUNE = "finetune"
    BOTH = "both"


def parse_fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise ValueError(f"--fractions {text!r}: give percentages like 1,10,100") from exc
    return tuple(sorted(set(values)))


def evaluate_command(
    target: Annotated[
        Path, typer.Option(help="Site TOML file of the target task (train/val/test splits).")
    ],
    out: Annotated[Path, typer.Option(help="Output folder (results.json, summary.md, PNG).")],
    encoder: Annotated[
        list[str] | None,
        typer.Option(
            "--encoder",
            help="[LABEL=]SPEC, repeatable: a checkpoint folder (a run's global/, pretrain's "
            "checkpoint/), 'random' or 'imagenet:<timm name>' (local weights only). A random "
            "baseline of each architecture is always added.",
        ),
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="Target task name, when the file has several.")
    ] = None,
    fractions: Annotated[
        str, typer.Option(help="Shares of the training labels, in percent.")
    ] = "1,5,10,25,50,100",
    mode: Annotated[ModeChoice, typer.Option(help="Train the head only, or everything.")] = (
        ModeChoice.BOTH
    ),
    seeds: Annotated[int, typer.Option(help="Seeds per cell (subset, head init, order).")] = 5,
    steps: Annotated[int, typer.Option(help="Most training steps of one cell.")] = 300,
    min_steps: Annotated[int, typer.Option(help="Fewest training steps of one cell.")] = 100,
    metric: Annotated[
        str | None,
        typer.Option(
            help="Metric to select and report (default: balanced_accuracy for "
            "classification, else the task type's primary metric)."
        ),
    ] = None,  # fmt: skip
    preset: Annotated[
        PresetName, typer.Option(help="Architecture of 'random'/'imagenet:' without a folder.")
    ] = "tiny",  # type: ignore[assignment]
    device: Annotated[Device, typer.Option(help="Where to train.")] = Device.AUTO,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Measure how many labels each encoder saves on a new task (frozen and finetuned)."""
    from umedpt.config import load_site_config
    from umedpt.device import resolve_device
    from umedpt.evaluation import (
        EvalProtocol,
        choose_task,
        load_target,
        parse_encoders,
        run_evaluation,
    )
    from umedpt.evaluation.summary import PLOT_FILE, SUMMARY_MD

    setup_logging(verbose)
    try:
        protocol = EvalProtocol(
            fractions=parse_fractions(fractions),
            modes=("frozen", "finetune") if mode == ModeChoice.BOTH else (str(mode),),
            seeds=seeds,
            max_steps=steps,
            min_steps=min_steps,
            metric=metric,
        )
        specs = parse_encoders(encoder or [], preset=str(preset))
        site = load_site_config(target)
        console.print(f"target: task [bold]{choose_task(site, task).name}[/] of {site.file}")
        loaded = load_target(choose_task(site, task))
        console.print(
            "  " + ", ".join(f"{n} {s}" for s, n in loaded.describe()["sizes"].items())
            + "; encoders: " + ", ".join(s.label for s in specs)
        )  # fmt: skip
        with Progress(
            TextColumn("[bold]evaluate"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[last]}"),
            console=console,
        ) as progress:
            bar = progress.add_task("cells", total=None, last="")

            def on_cell(done: int, total: int, result: object) -> None:
                text = ""
                if result is not None:
                    r = result
                    text = (
                        f"{r.encoder} {r.mode} {r.fraction:g}% seed {r.seed}: "  # type: ignore[attr-defined]
                        f"{r.val_metric:.3f} (val)"  # type: ignore[attr-defined]
                    )
                progress.update(bar, completed=done, total=total, last=text)

            run_evaluation(loaded, specs, protocol, out, device=resolve_device(str(device)),
                           on_cell=on_cell)  # fmt: skip
    except BAD_INPUT_ERRORS as exc:
        raise fail(str(exc)) from exc
    console.print((out / SUMMARY_MD).read_text(), markup=False, highlight=False)
    console.print(f"results: {out / 'results.json'}, plot: {out / PLOT_FILE}")
