"""Shared test helpers: tiny in-memory tasks whose labels are learnable."""

from __future__ import annotations

from pathlib import Path

import torch

from umedpt.config import TaskConfig
from umedpt.data.samples import Sample, TaskData
from umedpt.training.trainer import TaskRun

SIZE = 64


def _noise(generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 100, (3, SIZE, SIZE), generator=generator, dtype=torch.uint8)


def classification_samples(n: int, generator: torch.Generator) -> list[Sample]:
    samples = []
    for i in range(n):
        label = i % 2
        image = _noise(generator)
        if label:
            image[:, 16:48, 16:48] += 120
        samples.append(Sample(image, f"cls-{i}", label=label))
    return samples


def multilabel_samples(n: int, generator: torch.Generator) -> list[Sample]:
    """Two independent findings: a bright square on the left half, one on the right half."""
    samples = []
    for i in range(n):
        left, right = i % 2, (i // 2) % 2  # every combination, including none and both
        image = _noise(generator)
        if left:
            image[:, 20:44, 4:28] += 120
        if right:
            image[:, 20:44, 36:60] += 120
        labels = torch.tensor([left, right], dtype=torch.uint8)
        samples.append(Sample(image, f"multi-{i}", labels=labels))
    return samples


def segmentation_samples(n: int, generator: torch.Generator) -> list[Sample]:
    samples = []
    for i in range(n):
        image, mask = _noise(generator), torch.zeros(SIZE, SIZE, dtype=torch.uint8)
        y, x = torch.randint(0, SIZE - 20, (2,), generator=generator).tolist()
        image[:, y : y + 20, x : x + 20] += 120
        mask[y : y + 20, x : x + 20] = 1
        samples.append(Sample(image, f"seg-{i}", mask=mask))
    return samples


def detection_samples(n: int, generator: torch.Generator) -> list[Sample]:
    samples = []
    for i in range(n):
        image = _noise(generator)
        y, x = torch.randint(0, SIZE - 16, (2,), generator=generator).tolist()
        image[:, y : y + 16, x : x + 16] += 120
        boxes = torch.tensor([[x, y, x + 16, y + 16]], dtype=torch.float32)
        samples.append(Sample(image, f"det-{i}", boxes=boxes, box_labels=torch.tensor([0])))
    return samples


MAKERS = {
    "classification": (classification_samples, ("absent", "present")),
    "multilabel": (multilabel_samples, ("left", "right")),
    "segmentation": (segmentation_samples, ("square",)),
    "detection": (detection_samples, ("square",)),
}


def make_task(name: str, task_type: str, batch_size: int = 8) -> TaskConfig:
    classes = MAKERS[task_type][1]
    return TaskConfig(name, task_type, "memory", Path("memory"), classes, batch_size=batch_size)


def make_run(
    name: str, task_type: str, *, n_train: int = 32, n_val: int = 16, seed: int = 0
) -> TaskRun:
    generator = torch.Generator().manual_seed(seed)
    maker = MAKERS[task_type][0]
    data = TaskData(
        {"train": maker(n_train, generator), "val": maker(n_val, generator), "test": []}
    )
    return TaskRun(make_task(name, task_type), data)
