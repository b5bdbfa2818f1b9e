"""What readers produce (records pointing at files) and what training consumes (samples)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch


class FileDecoder(Protocol):
    """Decodes the files of a format Pillow cannot read (DICOM, NIfTI), for ``ImageSource``.

    A frozen dataclass holding the decoding settings (a window, a frame): it is part of
    the ImageRef, so of the record's ``repr`` and hence of the data cache's key.
    """

    def read_image(self, ref: ImageRef) -> np.ndarray: ...  # uint8 RGB (H, W, 3)

    def read_mask(self, ref: ImageRef) -> np.ndarray: ...  # int64 class map (H, W)


@dataclass(frozen=True)
class ImageRef:
    """Where one image (or mask) lives: a file, or one array of an ``.npz`` member."""

    path: Path
    member: str | None = None  # .npz array name, e.g. "train_images"
    index: int | None = None  # position in that array
    decoder: FileDecoder | None = None  # None: Pillow (or npz when ``member`` is set)

    def __str__(self) -> str:
        if self.member is None:
            return str(self.path)
        return f"{self.path}[{self.member}][{self.index}]"


@dataclass(frozen=True)
class Record:
    """One labelled example as found on disk, before it is read.

    ``targets`` holds the annotations as the task type's reader found them (class indices
    into the task's ``classes``, boxes in pixels of the original image, ...); the task type's
    ``load_targets`` checks them and turns them into the Sample's targets. An ``ImageRef``
    among them (a mask) is a file whose pixels are decoded: see :meth:`files`.
    """

    image: ImageRef
    split: str | None = None  # "train" | "val" | "test"; None when the data has no split
    targets: dict[str, Any] = field(default_factory=dict)
    group: str | None = None  # records of one group always land in the same split

    def files(self) -> list[Path]:
        """Every file whose pixels loading this record decodes (what the cache key tracks)."""
        refs = [v for v in self.targets.values() if isinstance(v, ImageRef)]
        return [self.image.path, *(ref.path for ref in refs)]


@dataclass
class Sample:
    """One preprocessed example, resized to the task's square image size.

    ``targets`` is the task type's business: it sets them (``load_targets``) and declares
    their names and kinds (``target_fields``), which is all the cache needs to store them.
    """

    image: torch.Tensor  # uint8 (3, S, S)
    source: str  # the file it came from, for errors and previews
    targets: dict[str, Any] = field(default_factory=dict)
    original_size: tuple[int, int] = (0, 0)  # (height, width) before resizing


@dataclass
class TaskData:
    """A task's samples per split, plus what was skipped and why."""

    splits: dict[str, list[Sample]]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)

    def __getitem__(self, split: str) -> list[Sample]:
        return self.splits[split]
