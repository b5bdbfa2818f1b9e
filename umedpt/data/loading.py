"""Load a task's data eagerly into validated, resized Samples.

Everything is read and checked up front, so a bad file fails (or is skipped and reported)
before training starts instead of crashing a federated round hours later. A failure raises
DataError naming the file, unless the task sets ``skip_bad_samples``: then the sample is
skipped, listed in ``TaskData.skipped`` and summarised in one warning. Nothing is dropped
silently.

The image is read and resized here, the same for every task type; its targets (labels,
masks, boxes, ...) are the task type's business (``TaskType.load_targets``). Given a cache
folder, a load of unchanged files reads the decoded samples back (``umedpt.data.cache``): the
listing and the checks of what the reader sees still run, the decoding does not.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from umedpt.config import TaskConfig
from umedpt.data.cache import CachedData, TaskCache, cache_key
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


ProgressFn = Callable[[int, int], None]  # (samples done, samples in total)


@dataclass(frozen=True)
class LoadedTask:
    """A task's data and how it was obtained (for the progress lines of check-site and client)."""

    data: TaskData
    seconds: float
    from_cache: bool  # read from ``cache_file`` instead of decoded
    cache_file: Path | None  # None without a cache folder (or when it could not be written)


def load_task_data(
    task: TaskConfig, *, cache_dir: Path | None = None, on_progress: ProgressFn | None = None
) -> TaskData:
    """Read, split, decode, validate and resize every sample of ``task``.

    With ``cache_dir``, the decoded samples are kept there (:mod:`umedpt.data.cache`) and a
    later load of unchanged files reads them back instead of decoding every image again.
    """
    return load_task(task, cache_dir=cache_dir, on_progress=on_progress).data


def load_task(
    task: TaskConfig, *, cache_dir: Path | None = None, on_progress: ProgressFn | None = None
) -> LoadedTask:
    """:func:`load_task_data`, also saying how long it took and whether the cache served it."""
    start = time.perf_counter()
    task_type = get_task_type(task.type)
    problems = Problems(task)
    records = read_records(task, problems)
    cache = None
    if cache_dir is not None:
        cache = TaskCache(cache_dir, task, cache_key(task, records, problems.skipped))
    cached = cache.read() if cache is not None else None
    from_cache = cached is not None
    if cached is not None:
        if on_progress is not None:
            on_progress(len(records), len(records))
    else:
        cached = _decode(task, task_type, records, problems, on_progress)
        if cache is not None and not cache.write(cached):
            cache = None
    data = cached.data
    _warn_dropped(task, cached.dropped)
    _warn_skipped(task, data.skipped)
    seconds = time.perf_counter() - start
    logger.info(
        "task '%s': %s %s samples in %.2f s (%d skipped)",
        task.name,
        "read from the cache" if from_cache else "loaded",
        "/".join(f"{len(v)} {k}" for k, v in data.splits.items()),
        seconds,
        len(data.skipped),
    )
    return LoadedTask(data, seconds, from_cache, cache.file if cache is not None else None)


def _decode(
    task: TaskConfig,
    task_type: TaskType,
    records: list[Record],
    problems: Problems,
    on_progress: ProgressFn | None,
) -> CachedData:
    """Decode every record, split by split; a bad sample raises or is reported to ``problems``."""
    by_split = assign_splits(records, task.split)
    splits: dict[str, list[Sample]] = {}
    done = 0
    with ImageSource() as source:
        context = LoadContext(task, source)
        for split, split_records in by_split.items():
            samples = []
            for rec in split_records:
                try:
                    samples.append(load_sample(rec, task_type, context))
                except DataError as exc:
                    problems.report(exc.source, exc.problem)
                done += 1
                if on_progress is not None:
                    on_progress(done, len(records))
            splits[split] = samples
    return CachedData(TaskData(splits=splits, skipped=list(problems.skipped)), context.dropped)


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
