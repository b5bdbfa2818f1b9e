"""Shared test helpers: tiny in-memory tasks whose labels are learnable.

The samples are each task type's own ``synthetic_samples``, so a new task type brings its
test data with it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from umedpt.config import TaskConfig
from umedpt.data.samples import Sample, TaskData
from umedpt.tasks import get_task_type
from umedpt.training.trainer import TaskRun

SIZE = 64


def synthetic_samples(task_type: str, n: int, generator: torch.Generator) -> list[Sample]:
    """``n`` learnable samples of ``task_type`` at ``SIZE`` pixels, drawn from ``generator``."""
    return get_task_type(task_type).synthetic_samples(n, generator, image_size=SIZE)


def make_task(name: str, task_type: str, batch_size: int = 8) -> TaskConfig:
    classes = get_task_type(task_type).synthetic_classes
    return TaskConfig(name, task_type, "memory", Path("memory"), classes, batch_size=batch_size)


def make_run(
    name: str, task_type: str, *, n_train: int = 32, n_val: int = 16, seed: int = 0
) -> TaskRun:
    generator = torch.Generator().manual_seed(seed)
    data = TaskData(
        {
            "train": synthetic_samples(task_type, n_train, generator),
            "val": synthetic_samples(task_type, n_val, generator),
            "test": [],
        }
    )
    return TaskRun(make_task(name, task_type), data)
