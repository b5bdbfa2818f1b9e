"""Checks that turn a Record's annotations into valid targets, shared by the task types.

A task type's ``load_targets`` calls these with a :class:`LoadContext`; every failure is a
DataError naming the file, which the loader raises or (``skip_bad_samples``) reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from umedpt.config import TaskConfig
from umedpt.data.images import ImageSource
from umedpt.errors import DataError

BOX_TOLERANCE_PX = 1.0  # boxes may overshoot the image by this much (rounding in annotation tools)


@dataclass
class Dropped:
    """Parts of kept samples that were removed (e.g. empty boxes), warned about once per load."""

    counts: dict[str, int] = field(default_factory=dict)  # what -> how many
    files: dict[str, list[str]] = field(default_factory=dict)  # what -> the files they came from

    def add(self, what: str, count: int, where: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + count
        self.files.setdefault(what, []).append(where)


@dataclass
class LoadContext:
    """What a task type needs to load one sample's targets: the task, a reader, a tally."""

    task: TaskConfig
    source: ImageSource  # reads masks (and any other file a record points at)
    dropped: Dropped = field(default_factory=Dropped)


def check_label(label: int | None, n_classes: int, where: str) -> int:
    """A single class index in ``0..n_classes - 1``."""
    if label is None:
        raise DataError(where, "no class label")
    if not 0 <= label < n_classes:
        raise DataError(
            where, f"label {label} is out of range for {n_classes} classes (0..{n_classes - 1})"
        )
    return label


def check_labels(labels: Sequence[int] | None, n_classes: int, where: str) -> np.ndarray:
    """Positive class indices -> a uint8 multi-hot vector (C,); an empty list is valid."""
    if labels is None:
        raise DataError(where, "no labels (an empty list means 'no positive label')")
    multi_hot = np.zeros(n_classes, dtype=np.uint8)
    for label in labels:
        if not 0 <= label < n_classes:
            raise DataError(
                where,
                f"label {label} is out of range for {n_classes} classes (0..{n_classes - 1})",
            )
        multi_hot[label] = 1
    return multi_hot


def check_mask(
    mask: np.ndarray, image_hw: tuple[int, int], n_classes: int, *, where: str, image: str
) -> np.ndarray:
    """Validate a class map (the file ``where``) against its image (the file ``image``).

    A single-class mask saved as 0/255 (a common way of saving binary masks so they are
    visible in an image viewer) is read as 0/1; any other value above ``n_classes`` is an error.
    """
    if mask.shape != image_hw:
        raise DataError(
            where,
            f"mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {image} is "
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


def check_boxes(
    raw_boxes: Sequence[Sequence[float]],
    raw_labels: Sequence[int],
    image_hw: tuple[int, int],
    n_classes: int,
    dropped: Dropped,
    where: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes as float32 (N, 4) xyxy and int64 labels, in original pixels of the image ``where``.

    Boxes overshooting the image by at most ``BOX_TOLERANCE_PX`` are clipped; larger
    overshoots and inverted boxes are errors; zero-width/height boxes are removed and counted.
    """
    if len(raw_boxes) != len(raw_labels):
        raise DataError(where, f"{len(raw_boxes)} boxes but {len(raw_labels)} box labels")
    height, width = image_hw
    boxes = np.asarray(raw_boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(raw_labels, dtype=np.int64).reshape(-1)
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
        dropped.add("zero-width/height boxes", int((~keep).sum()), where)
    return boxes[keep], labels[keep]


def _fmt(box: np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in box) + ")"
