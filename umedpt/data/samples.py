"""What readers produce (records pointing at files) and what training consumes (samples)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass(frozen=True)
class ImageRef:
    """Where one image (or mask) lives: a file, or one array of an ``.npz`` member."""

    path: Path
    member: str | None = None  # .npz array name, e.g. "train_images"
    index: int | None = None  # position in that array

    def __str__(self) -> str:
        if self.member is None:
            return str(self.path)
        return f"{self.path}[{self.member}][{self.index}]"


@dataclass(frozen=True)
class Record:
    """One labelled example as found on disk, before it is read.

    Labels use class indices into the task's ``classes``. ``labels`` lists the positive
    classes of a multi-label example (``()``: none is positive; ``None``: not annotated).
    Segmentation masks hold 0 for background and ``1..len(classes)`` for the foreground
    classes. Boxes are ``(x_min, y_min, x_max, y_max)`` in pixels of the original image.
    """

    image: ImageRef
    split: str | None = None  # "train" | "val" | "test"; None when the data has no split
    label: int | None = None
    labels: tuple[int, ...] | None = None
    mask: ImageRef | None = None
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    box_labels: tuple[int, ...] = ()
    group: str | None = None  # records of one group always land in the same split


@dataclass
class Sample:
    """One preprocessed example, resized to the task's square image size.

    Which target fields are set is up to the task type (its ``load_targets``).
    """

    image: torch.Tensor  # uint8 (3, S, S)
    source: str  # the file it came from, for errors and previews
    label: int | None = None  # single-label classification
    labels: torch.Tensor | None = None  # multi-label: uint8 (C,) multi-hot
    mask: torch.Tensor | None = None  # uint8 (S, S), 0 = background
    boxes: torch.Tensor | None = None  # float32 (N, 4) xyxy in resized pixels
    box_labels: torch.Tensor | None = None  # int64 (N,)
    original_size: tuple[int, int] = (0, 0)  # (height, width) before resizing


@dataclass
class TaskData:
    """A task's samples per split, plus what was skipped and why."""

    splits: dict[str, list[Sample]]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)

    def __getitem__(self, split: str) -> list[Sample]:
        return self.splits[split]
