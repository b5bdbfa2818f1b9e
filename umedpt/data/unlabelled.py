"""Readers of images without labels, for the ``self-supervised`` task type.

Formats (paths relative to the site file's folder, like every reader's):

- ``folder``: ``path`` is a folder; every image file under it, at any depth, is one example
  (hidden files and folders are skipped, other files are named in a warning). No options.
- ``csv``: ``path`` is a CSV file with a ``path_column`` ("path"); ``split_column``
  ("split", optional column; "" ignores it) and ``images_root`` ("" = the CSV's folder) as for
  the labelled CSVs. Other columns are ignored.
- ``npz``: a MedMNIST-style archive; ``{key_prefix}{split}_images`` (or unsplit
  ``images``) arrays are read, label arrays need not exist and are ignored.

A labelled task's files can be read as unlabelled images by changing only its ``type``:
``class-folders`` (every class folder's images), ``mask-folder`` (its ``images`` folder),
``voc`` (its ``images`` folder, split by its ``image_sets`` lists where they exist) and
``coco`` (the JSON's ``images``) are registered for this type too, with the labelled
format's options (the label-only ones are accepted and ignored), as are ``csv``'s
``label_column``/``labels_column``/``separator``.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from umedpt.config import SPLITS, TaskConfig
from umedpt.data.images import IMAGE_SUFFIXES
from umedpt.data.readers import (
    ClassFoldersOptions,
    CocoOptions,
    MaskFolderOptions,
    NpzOptions,
    Problems,
    VocOptions,
    _image_files,
    _read_csv,
    _require_dir,
    _require_file,
    _resolve,
    _voc_splits,
    _warn_ignored,
    parse_options,
    register_reader,
)
from umedpt.data.samples import ImageRef, Record
from umedpt.errors import DataError

TASK_TYPE = "self-supervised"


def _no_images(task: TaskConfig, where: Path) -> DataError:
    return DataError(str(where), "no image files found", task=task.name)


def images_under(folder: Path) -> list[Path]:
    """Every image file under ``folder`` at any depth, sorted; hidden files and folders skipped."""
    images, others = [], []
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in file.relative_to(folder).parts):
            continue
        (images if file.suffix.lower() in IMAGE_SUFFIXES else others).append(file)
    _warn_ignored(folder, others)
    return images


# --- folder (and class-folders) --------------------------------------------------------


@dataclass(frozen=True)
class FolderOptions:
    """No options: every image file under ``path`` is one example."""


def read_folder(task: TaskConfig, problems: Problems) -> list[Record]:
    """Every image under ``path``, at any depth (class folders included): no labels, no split."""
    options_cls = ClassFoldersOptions if task.format == "class-folders" else FolderOptions
    parse_options(task, options_cls)
    _require_dir(task, task.path, "path")
    records = [Record(image=ImageRef(p)) for p in images_under(task.path)]
    if not records:
        raise _no_images(task, task.path)
    return records


# --- csv -------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnlabelledCsvOptions:
    path_column: str = "path"
    split_column: str = "split"  # optional column: train / val (validation, valid) / test
    images_root: str = ""  # empty: the CSV file's folder
    # A labelled table's options, accepted so that only its ``type`` needs changing; unused.
    label_column: str = "label"
    labels_column: str = "labels"
    separator: str = "|"


def read_csv_paths(task: TaskConfig, problems: Problems) -> list[Record]:
    """The ``path_column`` of a CSV (and its optional split column); labels are ignored."""
    opts = parse_options(task, UnlabelledCsvOptions)
    return _read_csv(task, problems, opts, None, lambda cell: {})


# --- npz -------------------------------------------------------------------------------


def read_npz_images(task: TaskConfig, problems: Problems) -> list[Record]:
    """The image arrays of a MedMNIST-style archive, per split; label arrays are ignored."""
    opts = parse_options(task, NpzOptions)
    _require_file(task, task.path, "path")
    try:
        with np.load(task.path, allow_pickle=False) as npz:
            names = set(npz.files)
            keys = [(s, f"{opts.key_prefix}{s}_images") for s in SPLITS]
            keys.append((None, f"{opts.key_prefix}images"))
            found = [(split, key, len(npz[key])) for split, key in keys if key in names]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(str(task.path), f"cannot read npz archive: {exc}", task=task.name) from exc
    if not found:
        raise DataError(
            str(task.path),
            f"no '{opts.key_prefix}<split>_images' arrays (found: {', '.join(sorted(names))})",
            task=task.name,
        )
    if any(s is None for s, _, _ in found) and any(s is not None for s, _, _ in found):
        raise DataError(str(task.path), "mixes split arrays with unsplit 'images'", task=task.name)
    return [
        Record(image=ImageRef(task.path, key, i), split=split)
        for split, key, count in found
        for i in range(count)
    ]


# --- the labelled formats' images ------------------------------------------------------


def _images_below(task: TaskConfig, images: str) -> dict[str, Path]:
    """The image files (by stem) of the ``images`` folder below a task's ``path``; at least one."""
    _require_dir(task, task.path, "path")
    image_dir = task.path / images
    _require_dir(task, image_dir, "options.images")
    found, others = _image_files(image_dir)
    _warn_ignored(image_dir, others)
    if not found:
        raise _no_images(task, image_dir)
    return found


def read_mask_folder_images(task: TaskConfig, problems: Problems) -> list[Record]:
    """The ``images`` folder of a ``mask-folder`` task; masks are not read."""
    opts = parse_options(task, MaskFolderOptions)
    return [Record(image=ImageRef(p)) for p in _images_below(task, opts.images).values()]


def read_voc_images(task: TaskConfig, problems: Problems) -> list[Record]:
    """A VOC folder's images, split by its ``image_sets`` lists where an image is listed."""
    opts = parse_options(task, VocOptions)
    images = _images_below(task, opts.images)
    split_of = _voc_splits(task.path / opts.image_sets, task)
    return [Record(image=ImageRef(p), split=split_of.get(stem)) for stem, p in images.items()]


def read_coco_images(task: TaskConfig, problems: Problems) -> list[Record]:
    """The images a COCO JSON lists; its annotations are not read."""
    opts = parse_options(task, CocoOptions)
    _require_file(task, task.path, "path")
    root = _resolve(task, opts.images_root, task.path.parent)
    _require_dir(task, root, "options.images_root")
    try:
        doc = json.loads(task.path.read_text(encoding="utf-8"))
        files = sorted({str(image["file_name"]) for image in doc["images"]})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(str(task.path), f"not a COCO file: {exc!r}", task=task.name) from exc
    if not files:
        raise DataError(str(task.path), "lists no images", task=task.name)
    return [Record(image=ImageRef(root / name)) for name in files]


register_reader("folder", TASK_TYPE, read_folder, FolderOptions)
register_reader("class-folders", TASK_TYPE, read_folder, ClassFoldersOptions)
register_reader("csv", TASK_TYPE, read_csv_paths, UnlabelledCsvOptions)
register_reader("npz", TASK_TYPE, read_npz_images, NpzOptions)
register_reader("mask-folder", TASK_TYPE, read_mask_folder_images, MaskFolderOptions)
register_reader("voc", TASK_TYPE, read_voc_images, VocOptions)
register_reader("coco", TASK_TYPE, read_coco_images, CocoOptions)
