"""Synthetic in-memory tasks and loop pieces for the throughput and memory benchmarks.

The samples are each task type's own ``synthetic_samples`` (what the tests train on too), at
any image size and batch size, so every registered type can be benchmarked. Content is
irrelevant to speed and memory, but targets are well-formed (detection boxes land on FCOS
points), so every loss takes its full code path.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from umedpt.config import TaskConfig
from umedpt.data.samples import TaskData
from umedpt.model import UMedPTModel
from umedpt.tasks import get_task_type, total_loss
from umedpt.tasks.base import Batch
from umedpt.training.trainer import MultiTaskTrainer, TaskRun


def make_run(
    name: str, task_type: str, *, n: int, size: int, batch_size: int, seed: int
) -> TaskRun:
    """A task with ``n`` training samples (no validation data: benchmarks only train)."""
    generator = torch.Generator().manual_seed(seed)
    kind = get_task_type(task_type)  # RegistryError names the registered types
    config = TaskConfig(
        name,
        task_type,
        "memory",
        Path("memory"),
        kind.synthetic_classes,
        image_size=size,
        batch_size=batch_size,
    )
    samples = kind.synthetic_samples(n, generator, image_size=size)
    return TaskRun(config, TaskData({"train": samples, "val": [], "test": []}))


def precollate(run: TaskRun, num_batches: int) -> list[Batch]:
    """Collate the run's samples into ``num_batches`` full batches, once, up front."""
    size = run.config.batch_size
    collate = get_task_type(run.config.type).collate
    samples = run.data["train"]
    if len(samples) < num_batches * size:
        raise ValueError(f"need {num_batches * size} samples, the run has {len(samples)}")
    return [collate(samples[i * size : (i + 1) * size]) for i in range(num_batches)]


def add_synthetic_args(parser: argparse.ArgumentParser, *, batches: int) -> None:
    """``--batch-size``, ``--batches`` and ``--image-size``: what ``synthetic_runs`` reads."""
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--batches", type=int, default=batches, help="distinct pre-collated batches"
    )
    parser.add_argument("--image-size", type=int, default=64)


def describe_setup(settings: dict[str, Any]) -> str:
    """The markdown's opening words on what ``synthetic_runs`` built: preset, size, batch."""
    return (
        f"{settings['preset'].capitalize()} preset, {settings['image_size']} px, "
        f"batch {settings['batch_size']} per task"
    )


def synthetic_runs(
    task_types: Sequence[str], args: argparse.Namespace
) -> tuple[list[TaskRun], list[list[Batch]]]:
    """One run per task type (named ``<type>-<i>``, seed ``--seed + i``) and its batches."""
    runs = [
        make_run(
            f"{t}-{i}",
            t,
            n=args.batches * args.batch_size,
            size=args.image_size,
            batch_size=args.batch_size,
            seed=args.seed + i,
        )
        for i, t in enumerate(task_types)
    ]
    return runs, [precollate(r, args.batches) for r in runs]


class ReplayStream:
    """Stands in for a trainer's ``TaskStream``: cycles through pre-collated batches.

    Lets the trainer and a hand-written loop consume the very same tensors, so the
    comparison measures the loop only, not collation.
    """

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches
        self.position = 0

    def next_batch(self) -> Batch:
        batch = self.batches[self.position % len(self.batches)]
        self.position += 1
        return batch


def replay_into(
    trainer: MultiTaskTrainer, runs: Sequence[TaskRun], batches: list[list[Batch]]
) -> MultiTaskTrainer:
    """Make ``trainer`` consume each run's pre-collated batches instead of collating."""
    for task, task_batches in zip(runs, batches, strict=True):
        trainer.streams[task.name] = ReplayStream(task_batches)  # type: ignore[assignment]
    return trainer


def hand_written_loop(
    model: UMedPTModel, runs: Sequence[TaskRun], batches: list[list[Batch]]
) -> tuple[torch.optim.Optimizer, Iterator[list[tuple[TaskRun, Batch]]]]:
    """What a hand-written multi-task loop starts from: one AdamW over all parameters (the
    preset's lr and weight decay; the model in train mode) and, step after step, every task
    with its next pre-collated batch, cycling like ``ReplayStream``."""
    cfg = model.config
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    steps = (
        [
            (task, task_batches[position % len(task_batches)])
            for task, task_batches in zip(runs, batches, strict=True)
        ]
        for position in itertools.count()
    )
    return optimizer, steps


def task_loss(model: UMedPTModel, task: TaskRun, batch: Batch) -> torch.Tensor:
    """One task's forward pass and loss (the sum of its loss components, as the trainer sums)."""
    return total_loss(task.task_type.loss(model(batch.images, task.name), batch, task.config))
