"""Centralized multi-task pretraining on the shared datasets vs each task trained alone.

Why: UMedPT's claim is that one shared encoder trained on many small tasks is at least as good
for each task as a model trained on that task alone. This experiment trains the tiny preset on
every site of ``bench/sites/*.toml`` (or ``--sites``) together for ``--steps`` multi-task
steps, then trains one single-task model per task for the same number of steps *with the
identical batch sequence* of that task (same stream seed), so every task's examples seen are
equal and the only difference is the other tasks sharing the encoder. Validation metrics of
both are reported.

Results: ``experiments/results/centralized.{json,md}``.

    PYTHONPATH=. python3 experiments/centralized.py             # full run (~25 min on 2 cores)
    PYTHONPATH=. python3 experiments/centralized.py --steps 20 --out /tmp/bench  # smoke test
"""

from __future__ import annotations

from federation.entry import enter_command_process

enter_command_process()  # a process entry: no Flower telemetry, whatever imports Flower

import argparse
import logging
import time
from collections.abc import Sequence
from typing import Any

from bench.common import add_sites_arg, finish_run, site_files, start_run
from bench.report import Report
from experiments.common import experiment_parser
from umedpt.config import load_site_config
from umedpt.model import UMedPTModel, count_parameters
from umedpt.models.presets import PRESETS, ModelConfig
from umedpt.pretrain import collect_tasks, load_runs, steps_per_epoch
from umedpt.training.seeding import seed_everything
from umedpt.training.streams import TaskStream
from umedpt.training.trainer import MultiTaskTrainer, TaskRun, TrainConfig

log = logging.getLogger("experiments.centralized")


def stream_seed(seed: int, index: int) -> int:
    """The stream seed the trainer gives task ``index`` of a multi-task run."""
    return seed * 1000 + index


def build_trainer(
    model_config: ModelConfig, runs: Sequence[TaskRun], seeds: Sequence[int], seed: int
) -> MultiTaskTrainer:
    """A trainer as ``umedpt.pretrain`` builds it, with explicit per-task stream seeds.

    Overriding the streams lets a single-task run replay exactly the batches its task saw in
    the multi-task run (the trainer would otherwise seed task 0 of every run identically).
    """
    seed_everything(seed)
    model = UMedPTModel(model_config, [r.config for r in runs], seed=seed)
    trainer = MultiTaskTrainer(model, runs, TrainConfig(seed=seed, device="cpu"))
    for run, task_seed in zip(runs, seeds, strict=True):
        trainer.streams[run.name] = TaskStream(
            run.data["train"],
            run.config.batch_size,
            run.task_type.collate,
            seed=task_seed,
            augment=run.augmenter(),
        )
    return trainer


def train_with_evals(trainer: MultiTaskTrainer, steps: int, eval_every: int) -> dict[str, Any]:
    """Train ``steps`` steps, validating every ``eval_every``; time training and eval apart."""
    history: list[dict[str, Any]] = []
    train_seconds = eval_seconds = 0.0
    done = 0
    while done < steps:
        chunk = min(eval_every, steps - done)
        report = trainer.train_steps(chunk)
        train_seconds += report.seconds
        done += chunk
        start = time.perf_counter()
        val = trainer.evaluate("val")
        eval_seconds += time.perf_counter() - start
        history.append({"step": done, "train_loss": report.losses, "val": val})
        log.info("step %d/%d: %s", done, steps, _summary(trainer.tasks, val))
    return {
        "steps": steps,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "seconds_per_step": train_seconds / max(steps, 1),
        "history": history,
        "final": history[-1]["val"],
    }


def _summary(tasks: Sequence[TaskRun], val: dict[str, dict[str, float]]) -> str:
    parts = []
    for t in tasks:
        metric = t.task_type.primary_metric
        parts.append(f"{t.name} {metric}={val[t.name][metric]:.3f}")
    return ", ".join(parts)


def report_of(result: dict[str, Any]) -> Report:
    """Per-task table: primary metric (and the rest) multi-task vs single-task."""
    rows = []
    for name, info in result["tasks"].items():
        multi = result["multi_task"]["final"][name]
        single = result["single_task"][name]["final"][name]
        primary = info["primary_metric"]
        others = [k for k in multi if k not in (primary, "loss")]
        rows.append(
            [
                name,
                info["type"],
                f"{primary}",
                multi[primary],
                single[primary],
                multi[primary] - single[primary],
                ", ".join(f"{k} {multi[k]:.3f}/{single[k]:.3f}" for k in others),
                f"{multi['loss']:.3f}/{single['loss']:.3f}",
            ]
        )
    header = [
        "task",
        "type",
        "metric",
        "multi-task",
        "single-task",
        "delta",
        "other metrics (multi/single)",
        "val loss (multi/single)",
    ]
    mt = result["multi_task"]
    singles = result["single_task"]
    single_train = sum(s["train_seconds"] for s in singles.values())
    report = Report(
        f"Centralized pretraining: {len(result['tasks'])} tasks together vs each task alone"
    )
    report.text(
        f"Tiny preset ({result['parameters_m']:.2f}M parameters), seed {result['seed']}, "
        f"{result['steps']} steps (one batch of every task per multi-task step; each "
        "single-task run replays exactly the same batches of its task). Validation split."
    )
    report.table(header, rows)
    report.text(
        f"Wall time: multi-task {mt['train_seconds']:.0f} s training "
        f"({mt['seconds_per_step']:.2f} s/step) + {mt['eval_seconds']:.0f} s eval; "
        f"single-task runs {single_train:.0f} s training in total; "
        f"whole benchmark {result['total_seconds']:.0f} s. "
        f"Epochs of the longest task: {result['epochs']:.1f}.",
        "Learning curve (primary metric, multi-task / single-task):",
    )
    names = list(result["tasks"])
    curve_rows = []
    for i, entry in enumerate(mt["history"]):
        row: list[Any] = [entry["step"]]
        for name in names:
            primary = result["tasks"][name]["primary_metric"]
            single_entry = singles[name]["history"][i]
            row.append(
                f"{entry['val'][name][primary]:.3f} / {single_entry['val'][name][primary]:.3f}"
            )
        curve_rows.append(row)
    return report.table(["step", *names], curve_rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = experiment_parser(__doc__, name="centralized", threads=2, preset="tiny")
    parser.add_argument("--steps", type=int, default=300, help="multi-task steps (and per task)")
    parser.add_argument("--eval-every", type=int, default=None, help="default: steps // 4")
    add_sites_arg(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = start_run(args)
    sites = [load_site_config(f) for f in site_files(args)]
    tasks = collect_tasks(sites)
    load_start = time.perf_counter()
    runs = load_runs(tasks)
    load_seconds = time.perf_counter() - load_start
    model_config = PRESETS.get(args.preset)
    eval_every = args.eval_every or max(1, args.steps // 4)
    seeds = [stream_seed(args.seed, i) for i in range(len(runs))]

    multi = build_trainer(model_config, runs, seeds, args.seed)
    parameters_m = count_parameters(multi.model) / 1e6
    epochs = args.steps / steps_per_epoch(multi.tasks)
    log.info("multi-task run: %d tasks, %d steps", len(runs), args.steps)
    multi_result = train_with_evals(multi, args.steps, eval_every)
    del multi

    single_results = {}
    for run, task_seed in zip(runs, seeds, strict=True):
        log.info("single-task run: %s", run.name)
        trainer = build_trainer(model_config, [run], [task_seed], args.seed)
        single_results[run.name] = train_with_evals(trainer, args.steps, eval_every)

    fields: dict[str, Any] = {
        "preset": args.preset,
        "parameters_m": parameters_m,
        "seed": args.seed,
        "steps": args.steps,
        "eval_every": eval_every,
        "epochs": epochs,
        "load_seconds": load_seconds,
        "tasks": {
            r.name: {
                "type": r.config.type,
                "primary_metric": r.task_type.primary_metric,
                "image_size": r.config.image_size,
                "batch_size": r.config.batch_size,
                "splits": {k: len(v) for k, v in r.data.splits.items()},
                "examples_seen": args.steps * min(r.config.batch_size, len(r.data["train"])),
            }
            for r in runs
        },
        "multi_task": multi_result,
        "single_task": single_results,
    }
    return finish_run(args, "centralized", fields, report_of, start=start)


if __name__ == "__main__":
    main()
