"""Load a task's data eagerly into validated, resized Samples.

Everything is read and checked up front, so a bad file fails (or is skipped and reported)
before training starts instead of crashing a federated round hours later. A failure raises
DataError naming the file, unless the task sets ``skip_bad_samples``: then the sample is
skipped, listed in ``TaskData.skipped`` and summarised in one warning. Nothing is dropped
silently.

The image is read and resized here, the same for every task type; its targets (labels,
masks, boxes, ...) are the task type's business (``TaskType.load_targets``).
"""

from __future__ import annotations

import logging
import time
import warnings

import torch

from umedpt.config import TaskConfig
from umedpt.data.images import ImageSource, resize_image
from umedpt.data.readers import Problems, read_records
from umedpt.data.samples import Record, Sample, TaskData
from umedpt.data.splits import assign_splits
from umedpt.data.targets import Dropped, LoadContext
from umedpt.errors import DataError
from umedpt.tasks import TaskType, get_task_type

logger = logging.getLogger(__name__)

_LISTED = 3  # skipped files named in the summary warning
_LISTED_DROPPED_FILES = 10  # files named in a dropped-parts warning


def load_task_data(task: TaskConfig) -> TaskData:
    """Read, split, decode, validate and resize every sample of ``task``."""
    start = time.perf_counter()
    task_type = get_task_type(task.type)
    problems = Problems(task)
    records = read_records(task, problems)
    by_split = assign_splits(records, task.split)
    splits: dict[str, list[Sample]] = {}
    with ImageSource() as source:
        context = LoadContext(task, source)
        for split, split_records in by_split.items():
            samples = []
            for rec in split_records:
                try:
                    samples.append(load_sample(rec, task_type, context))
                except DataError as exc:
                    problems.report(exc.source, exc.problem)
            splits[split] = samples
    _warn_dropped(task, context.dropped)
    _warn_skipped(task, problems.skipped)
    logger.info(
        "task '%s': loaded %s samples in %.2f s (%d skipped)",
        task.name,
        "/".join(f"{len(v)} {k}" for k, v in splits.items()),
        time.perf_counter() - start,
        len(problems.skipped),
    )
    return TaskData(splits=splits, skipped=list(problems.skipped))


def load_sample(rec: Record, task_type: TaskType, context: LoadContext) -> Sample:
    """Read and resize one record's image; its task type adds the targets."""
    rgb = context.source.read_image(rec.image)
    height, width = rgb.shape[:2]
    sample = Sample(
        image=torch.from_numpy(
            resize_image(rgb, context.task.image_size).transpose(2, 0, 1).copy()
        ),
        source=str(rec.image),
        original_size=(height, width),
    )
    task_type.load_targets(rec, sample, context)
    return sample


def _warn_dropped(task: TaskConfig, dropped: Dropped) -> None:
    for what, count in dropped.counts.items():
        files = dropped.files[what]
        more = len(files) - _LISTED_DROPPED_FILES
        warnings.warn(
            f"task '{task.name}': dropped {count} {what} from {len(files)} images: "
            f"{', '.join(files[:_LISTED_DROPPED_FILES])}"
            + (f" (and {more} more)" if more > 0 else ""),
            stacklevel=3,
        )


def _warn_skipped(task: TaskConfig, skipped: list[tuple[str, str]]) -> None:
    if skipped:
        first = "; ".join(f"{src}: {why}" for src, why in skipped[:_LISTED])
        more = f" (and {len(skipped) - _LISTED} more)" if len(skipped) > _LISTED else ""
        warnings.warn(
            f"task '{task.name}': skipped {len(skipped)} bad samples (skip_bad_samples = true): "
            f"{first}{more}; see TaskData.skipped",
            stacklevel=3,
        )
