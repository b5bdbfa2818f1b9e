"""Load a task's data eagerly into validated, resized Samples.

Everything is read and checked up front, so a bad file fails (or is skipped and reported)
before training starts instead of crashing a federated round hours later. A failure raises
DataError naming the file, unless the task sets ``skip_bad_samples``: then the sample is
skipped, listed in ``TaskData.skipped`` and summarised in one warning. Nothing is dropped
silently.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from umedpt.config import TaskConfig
from umedpt.data.images import ImageSource, resize_image, resize_mask
from umedpt.data.readers import Problems, read_records
from umedpt.data.samples import Record, Sample, TaskData
from umedpt.data.splits import assign_splits
from umedpt.errors import DataError

logger = logging.getLogger(__name__)

BOX_TOLERANCE_PX = 1.0  # boxes may overshoot the image by this much (rounding in annotation tools)
_LISTED = 3  # skipped files named in the summary warning
_LISTED_BOX_FILES = 10  # files named in the dropped-boxes warning


@dataclass
class _Dropped:
    """Zero-width/height boxes removed from targets (kept sample, reported once)."""

    boxes: int = 0
    files: list[str] = field(default_factory=list)


def load_task_data(task: TaskConfig) -> TaskData:
    """Read, split, decode, validate and resize every sample of ``task``."""
    start = time.perf_counter()
    problems = Problems(task)
    records = read_records(task, problems)
    by_split = assign_splits(records, task.split)
    dropped = _Dropped()
    splits: dict[str, list[Sample]] = {}
    with ImageSource() as source:
        for split, split_records in by_split.items():
            samples = []
            for rec in split_records:
                try:
                    samples.append(_load_sample(rec, task, source, dropped))
                except DataError as exc:
                    problems.report(exc.source, exc.problem)
            splits[split] = samples
    _warn_dropped_boxes(task, dropped)
    _warn_skipped(task, problems.skipped)
    logger.info(
        "task '%s': loaded %s samples in %.2f s (%d skipped)",
        task.name,
        "/".join(f"{len(v)} {k}" for k, v in splits.items()),
        time.perf_counter() - start,
        len(problems.skipped),
    )
    return TaskData(splits=splits, skipped=list(problems.skipped))


def _load_sample(rec: Record, task: TaskConfig, source: ImageSource, dropped: _Dropped) -> Sample:
    where = str(rec.image)
    rgb = source.read_image(rec.image)
    height, width = rgb.shape[:2]
    size = task.image_size
    sample = Sample(
        image=torch.from_numpy(resize_image(rgb, size).transpose(2, 0, 1).copy()),
        source=where,
        original_size=(height, width),
    )
    if task.type == "classification":
        sample.label = _check_label(rec.label, len(task.classes), where)
    elif task.type == "segmentation":
        if rec.mask is None:
            raise DataError(where, "no mask for this image")
        mask = _check_mask(source.read_mask(rec.mask), (height, width), len(task.classes), rec)
        sample.mask = torch.from_numpy(resize_mask(mask, size).copy())
    elif task.type == "detection":
        boxes, labels = _check_boxes(rec, (height, width), len(task.classes), dropped)
        scale = np.array([size / width, size / height, size / width, size / height], np.float32)
        sample.boxes = torch.from_numpy(boxes * scale)
        sample.box_labels = torch.from_numpy(labels)
    return sample


def _check_label(label: int | None, n_classes: int, where: str) -> int:
    if label is None:
        raise DataError(where, "no class label")
    if not 0 <= label < n_classes:
        raise DataError(
            where, f"label {label} is out of range for {n_classes} classes (0..{n_classes - 1})"
        )
    return label


def _check_mask(
    mask: np.ndarray, image_hw: tuple[int, int], n_classes: int, rec: Record
) -> np.ndarray:
    """Validate a class map against its image.

    A single-class mask saved as 0/255 (a common way of saving binary masks so they are
    visible in an image viewer) is read as 0/1; any other value above ``n_classes`` is an error.
    """
    where = str(rec.mask)
    if mask.shape != image_hw:
        raise DataError(
            where,
            f"mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {rec.image} is "
            f"{image_hw[1]}x{image_hw[0]}",
        )
    low, high = int(mask.min()), int(mask.max())
    if low >= 0 and high <= n_classes:
        return mask
    if n_classes == 1 and low >= 0 and not np.any((mask != 0) & (mask != 255)):
        return (mask == 255).astype(np.int64)
    raise DataError(
        where,
        f"mask values must be 0 (background) to {n_classes} (classes), found {low}..{high}",
    )


def _check_boxes(
    rec: Record, image_hw: tuple[int, int], n_classes: int, dropped: _Dropped
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes as float32 (N, 4) xyxy and int64 labels, in original pixels.

    Boxes overshooting the image by at most ``BOX_TOLERANCE_PX`` are clipped; larger
    overshoots and inverted boxes are errors; zero-width/height boxes are removed and counted.
    """
    where = str(rec.image)
    if len(rec.boxes) != len(rec.box_labels):
        raise DataError(where, f"{len(rec.boxes)} boxes but {len(rec.box_labels)} box labels")
    height, width = image_hw
    boxes = np.asarray(rec.boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(rec.box_labels, dtype=np.int64).reshape(-1)
    for box, label in zip(boxes, labels, strict=True):
        x0, y0, x1, y1 = (float(v) for v in box)
        if not 0 <= label < n_classes:
            raise DataError(where, f"box label {label} is out of range for {n_classes} classes")
        if not np.isfinite(box).all() or x1 < x0 or y1 < y0:
            raise DataError(where, f"box {_fmt(box)} is not (x_min, y_min, x_max, y_max)")
        tol = BOX_TOLERANCE_PX
        if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
            raise DataError(where, f"box {_fmt(box)} lies outside the {width}x{height} image")
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if not keep.all():
        dropped.boxes += int((~keep).sum())
        dropped.files.append(where)
    return boxes[keep], labels[keep]


def _fmt(box: np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in box) + ")"


def _warn_dropped_boxes(task: TaskConfig, dropped: _Dropped) -> None:
    if dropped.boxes:
        more = len(dropped.files) - _LISTED_BOX_FILES
        warnings.warn(
            f"task '{task.name}': dropped {dropped.boxes} zero-width/height boxes from "
            f"{len(dropped.files)} images: {', '.join(dropped.files[:_LISTED_BOX_FILES])}"
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
