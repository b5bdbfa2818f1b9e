"""Readers: turn a task's files, in the format the site already has, into Records.

A reader only lists examples and their labels; it does not decode pixels (see
``umedpt.data.images``). Formats live in a plain registry, ``FORMATS``, per task type: one
format name (``csv``) may hold several task types, each with its own reader. Add one with
``register_reader``; ``formats_for(type)`` is what the config validator accepts. Each reader
has a frozen Options dataclass filled from the task's ``[tasks.options]`` table, so a
misspelled option is an error, not a silent default.

Formats and their options (all paths relative to the site file's folder, like ``path``):

- ``npz`` (classification, multilabel): ``path`` is a MedMNIST-style archive with
  ``{train,val,test}_images`` and ``{train,val,test}_labels`` (or unsplit ``images``/``labels``).
  Labels are (N,) or (N, 1) class indices; for multilabel, (N, C) 0/1 with one column per
  class (ChestMNIST's layout). Options: ``key_prefix`` ("").
- ``csv`` (classification): ``path`` is a CSV file. Options: ``path_column`` ("path"),
  ``label_column`` ("label", a class name or a class index), ``split_column`` ("split",
  optional column; "" ignores the file's split, so ``[tasks.split]`` splits the rows, e.g. by
  patient with ``group_pattern``), ``images_root`` ("" = the CSV file's folder).
- ``csv`` (multilabel): as above, but ``labels_column`` ("labels") holds the positive classes
  separated by ``separator`` ("|"), e.g. ``Effusion|Mass``; an empty cell means none.
- ``class-folders`` (classification): ``path`` holds one folder per class name. No options.
- ``mask-folder`` (segmentation): ``path`` holds ``images/`` and ``masks/``; a mask is found by
  the image's stem plus ``mask_suffix``. Options: ``images`` ("images"), ``masks`` ("masks"),
  ``mask_suffix`` ("").
- ``voc`` (detection): Pascal VOC folder. Options: ``annotations`` ("Annotations"),
  ``images`` ("JPEGImages"), ``image_sets`` ("ImageSets/Main").
- ``coco`` (detection): ``path`` is a COCO JSON file. Options: ``images_root`` ("" = the JSON
  file's folder).
- ``nifti`` (segmentation, classification, self-supervised): volumes sliced into 2-D
  samples; its layouts and options are in ``umedpt.data.nifti``.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from umedpt.config import SPLITS, TaskConfig
from umedpt.data.images import IMAGE_SUFFIXES
from umedpt.data.samples import ImageRef, Record
from umedpt.errors import DataError, RegistryError

logger = logging.getLogger(__name__)

OptionsT = TypeVar("OptionsT")
Box = tuple[float, float, float, float]


@dataclass
class Problems:
    """Per-sample problems of one load: raised at once, or collected if the task skips bad samples.

    Readers and the loader share one instance so that everything skipped ends up in
    ``TaskData.skipped``: nothing is dropped silently.
    """

    task: TaskConfig
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def report(self, source: str, problem: str) -> None:
        if not self.task.skip_bad_samples:
            raise DataError(source, problem, task=self.task.name)
        self.skipped.append((source, problem))


ReadFn = Callable[[TaskConfig, Problems], list[Record]]


@dataclass(frozen=True)
class ReaderSpec:
    """A registered format for one task type: its reader and its Options class."""

    name: str
    task_type: str
    read_fn: ReadFn
    options: type

    def read(self, task: TaskConfig, problems: Problems | None = None) -> list[Record]:
        """List the task's records (problems raise unless ``task.skip_bad_samples``)."""
        return self.read_fn(task, problems if problems is not None else Problems(task))


FORMATS: dict[str, dict[str, ReaderSpec]] = {}  # format name -> task type -> reader


def register_reader(name: str, task_type: str, read_fn: ReadFn, options: type) -> None:
    """Add a data format for one task type.

    ``options`` is a frozen dataclass whose fields all have defaults. A format name may be
    registered once per task type (``csv`` reads classification and multilabel tables).
    """
    readers = FORMATS.setdefault(name, {})
    if task_type in readers:
        raise ValueError(f"data format '{name}' is already registered for {task_type}")
    readers[task_type] = ReaderSpec(name, task_type, read_fn, options)


def get_reader(name: str, task_type: str) -> ReaderSpec:
    """The reader of format ``name`` for ``task_type``; RegistryError lists the valid names."""
    if name not in FORMATS:
        raise RegistryError("data format", name, list(FORMATS))
    try:
        return FORMATS[name][task_type]
    except KeyError:
        valid = list(formats_for(task_type))
        raise RegistryError(f"data format for {task_type}", name, valid) from None


def formats_for(task_type: str) -> tuple[str, ...]:
    """The formats that can hold data of ``task_type`` (used by the config validator)."""
    return tuple(name for name, readers in FORMATS.items() if task_type in readers)


def read_records(task: TaskConfig, problems: Problems | None = None) -> list[Record]:
    """Read a task's records with its format's reader and attach groups from ``group_pattern``."""
    readers = FORMATS.get(task.format)
    if readers is None:
        raise RegistryError("data format", task.format, list(FORMATS))
    if task.type not in readers:
        raise task.error(
            "format",
            f"format '{task.format}' holds {' or '.join(readers)} data, not {task.type} "
            f"({task.type} data can be read from {', '.join(formats_for(task.type)) or 'none'})",
        )
    records = readers[task.type].read(task, problems)
    if task.split.group_pattern:
        records = assign_groups(records, task.split.group_pattern)
    return records


def assign_groups(records: Sequence[Record], pattern: str) -> list[Record]:
    """Set each record's group to the first capture group (or whole match) of ``pattern``.

    The pattern is searched in the image's file name. A file it does not match forms its
    own group; they are counted in a log warning so a wrong pattern is noticed.
    """
    regex = re.compile(pattern)
    out, unmatched = [], []
    for rec in records:
        match = regex.search(rec.image.path.name)
        if match is None:
            unmatched.append(rec.image.path.name)
            group = f"<file>{rec.image}"
        else:
            group = match.group(1) if regex.groups else match.group(0)
        out.append(replace(rec, group=group))
    if unmatched:
        logger.warning(
            "group_pattern %r matched no part of %d file names (e.g. %s); each forms its own group",
            pattern,
            len(unmatched),
            ", ".join(unmatched[:3]),
        )
    return out


def parse_options(task: TaskConfig, options_cls: type[OptionsT]) -> OptionsT:
    """Build a reader's Options from ``task.options``; unknown keys and bad types name the field."""
    valid = {f.name: f for f in fields(options_cls)}  # type: ignore[arg-type]
    for key, value in task.options.items():
        if key not in valid:
            names = ", ".join(sorted(valid)) or "none"
            raise task.error(
                f"options.{key}", f"unknown option for format '{task.format}' (valid: {names})"
            )
        default = valid[key].default
        expected = type(default) if default is not MISSING else str
        if type(value) is not expected:
            raise task.error(f"options.{key}", f"must be a {expected.__name__}, got {value!r}")
    return options_cls(**dict(task.options))


def _resolve(task: TaskConfig, value: str, default: Path) -> Path:
    """An option path: relative to the site file's folder; empty means ``default``."""
    if not value:
        return default
    return (task.source.parent / value).resolve()


def _require_dir(task: TaskConfig, folder: Path, field_name: str) -> None:
    if not folder.is_dir():
        raise task.error(field_name, f"folder not found: {folder}")


def _require_file(task: TaskConfig, file: Path, field_name: str) -> None:
    if not file.is_file():
        raise task.error(field_name, f"file not found: {file}")


def _image_files(folder: Path) -> tuple[dict[str, Path], list[Path]]:
    """Image files of a folder by stem, plus the other files (reported, never silently ignored)."""
    images: dict[str, Path] = {}
    others: list[Path] = []
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        if file.suffix.lower() in IMAGE_SUFFIXES and not file.name.startswith("."):
            images.setdefault(file.stem, file)
        else:
            others.append(file)
    return images, others


def _warn_ignored(folder: Path, others: Sequence[Path]) -> None:
    if others:
        logger.warning(
            "%s: ignored %d non-image files (e.g. %s)",
            folder,
            len(others),
            ", ".join(p.name for p in others[:3]),
        )


# --- npz -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NpzOptions:
    key_prefix: str = ""  # arrays are named f"{key_prefix}{split}_images" / "_labels"


# A label array -> the targets of one Record per row, or a DataError for the archive.
NpzLabels = Callable[[np.ndarray, str, TaskConfig], list[dict[str, Any]]]


def read_npz(task: TaskConfig, problems: Problems) -> list[Record]:
    """MedMNIST-style archive: images (N,H,W[,C]), labels (N,) or (N,1), per split."""
    return _read_npz(task, _single_labels)


def read_npz_multilabel(task: TaskConfig, problems: Problems) -> list[Record]:
    """MedMNIST-style archive with (N, C) 0/1 labels, one column per class (ChestMNIST)."""
    return _read_npz(task, _multi_labels)


def _read_npz(task: TaskConfig, to_fields: NpzLabels) -> list[Record]:
    opts = parse_options(task, NpzOptions)
    _require_file(task, task.path, "path")
    try:
        with np.load(task.path, allow_pickle=False) as npz:
            names = set(npz.files)
            groups = [(s, f"{opts.key_prefix}{s}_") for s in SPLITS] + [(None, opts.key_prefix)]
            records: list[Record] = []
            for split, stem in groups:
                img_key, lab_key = f"{stem}images", f"{stem}labels"
                if img_key not in names and lab_key not in names:
                    continue
                if img_key not in names or lab_key not in names:
                    missing = img_key if img_key not in names else lab_key
                    raise DataError(str(task.path), f"has no array '{missing}'", task=task.name)
                n_images = len(npz[img_key])
                labels = to_fields(npz[lab_key], f"{task.path}[{lab_key}]", task)
                if len(labels) != n_images:
                    raise DataError(
                        str(task.path),
                        f"'{img_key}' has {n_images} images but '{lab_key}' {len(labels)} labels",
                        task=task.name,
                    )
                records += [
                    Record(image=ImageRef(task.path, img_key, i), split=split, targets=targets)
                    for i, targets in enumerate(labels)
                ]
            if not records:
                raise DataError(
                    str(task.path),
                    f"no '{opts.key_prefix}<split>_images' arrays "
                    f"(found: {', '.join(sorted(names))})",
                    task=task.name,
                )
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(str(task.path), f"cannot read npz archive: {exc}", task=task.name) from exc
    if any(r.split is None for r in records) and any(r.split is not None for r in records):
        raise DataError(
            str(task.path), "mixes split arrays with unsplit 'images'/'labels'", task=task.name
        )
    return records


def _single_labels(labels: np.ndarray, source: str, task: TaskConfig) -> list[dict[str, Any]]:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels.reshape(-1)
    if labels.ndim != 1:
        raise DataError(
            source,
            f"labels must be (N,) or (N, 1), got {labels.shape} "
            '(one column per class? use type = "multilabel")',
            task=task.name,
        )
    return [{"label": int(v)} for v in _integers(labels, source, task)]


def _multi_labels(labels: np.ndarray, source: str, task: TaskConfig) -> list[dict[str, Any]]:
    n_classes = len(task.classes)
    if labels.ndim != 2 or labels.shape[1] != n_classes:
        raise DataError(
            source,
            f"multi-label labels must be (N, {n_classes}), one 0/1 column per class, "
            f"got {labels.shape}",
            task=task.name,
        )
    labels = _integers(labels, source, task)
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise DataError(source, "multi-label labels must be 0 or 1", task=task.name)
    return [{"labels": tuple(int(i) for i in np.flatnonzero(row))} for row in labels]


def _integers(labels: np.ndarray, source: str, task: TaskConfig) -> np.ndarray:
    if not np.issubdtype(labels.dtype, np.integer) and not (
        np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels))
    ):
        raise DataError(source, f"labels must be integers, got {labels.dtype}", task=task.name)
    return labels.astype(np.int64)


# --- csv -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CsvOptions:
    path_column: str = "path"
    label_column: str = "label"  # a class name or a class index
    split_column: str = "split"  # optional column: train / val (validation, valid) / test
    images_root: str = ""  # empty: the CSV file's folder


@dataclass(frozen=True)
class MultiLabelCsvOptions:
    path_column: str = "path"
    labels_column: str = "labels"  # class names (or indices) joined by `separator`; may be empty
    separator: str = "|"
    split_column: str = "split"  # optional column: train / val (validation, valid) / test
    images_root: str = ""  # empty: the CSV file's folder


_SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}

# A label cell -> the targets of its Record, or the problem as a string.
CellLabels = Callable[[str], dict[str, Any] | str]


def read_csv(task: TaskConfig, problems: Problems) -> list[Record]:
    """A CSV listing image paths and labels. Row numbers count the header as row 1."""
    opts = parse_options(task, CsvOptions)
    class_index = {name: i for i, name in enumerate(task.classes)}

    def parse(cell: str) -> dict[str, Any] | str:
        label = _csv_label(cell, class_index)
        return label if isinstance(label, str) else {"label": label}

    return _read_csv(task, problems, opts, (opts.label_column, "label_column"), parse)


def read_csv_multilabel(task: TaskConfig, problems: Problems) -> list[Record]:
    """A CSV listing image paths and their positive classes, e.g. ``Effusion|Mass``."""
    opts = parse_options(task, MultiLabelCsvOptions)
    if not opts.separator:
        raise task.error("options.separator", "must not be empty")
    class_index = {name: i for i, name in enumerate(task.classes)}

    def parse(cell: str) -> dict[str, Any] | str:
        positives = set()
        for part in cell.split(opts.separator):
            if not part.strip():
                continue  # an empty cell (or a stray separator) adds no class
            label = _csv_label(part.strip(), class_index)
            if isinstance(label, str):
                return label
            positives.add(label)
        return {"labels": tuple(sorted(positives))}

    return _read_csv(task, problems, opts, (opts.labels_column, "labels_column"), parse)


@dataclass(frozen=True)
class CsvRow:
    """One usable row of an image table: where it is (for problems), its image and split."""

    where: str
    image: Path
    split: str | None
    cells: dict[str, str]


def csv_rows(
    task: TaskConfig, problems: Problems, opts: Any, required: Sequence[tuple[str, str]] = ()
) -> Iterator[CsvRow]:
    """The rows of ``task.path``'s CSV that name an image and a valid split.

    ``opts`` has ``path_column``, ``split_column`` ("" ignores one) and ``images_root``;
    ``required`` lists further (column, option naming it) pairs the header must have. A row
    with an empty path or an unknown split is reported to ``problems`` and left out.
    """
    _require_file(task, task.path, "path")
    root = _resolve(task, opts.images_root, task.path.parent)
    _require_dir(task, root, "options.images_root")
    try:
        with task.path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(str(task.path), f"cannot read CSV: {exc}", task=task.name) from exc
    for column, option in ((opts.path_column, "path_column"), *required):
        if column not in header:
            raise task.error(
                f"options.{option}",
                f"{task.path} has no column '{column}' (columns: {', '.join(header) or 'none'})",
            )
    has_split = bool(opts.split_column) and opts.split_column in header  # "": ignore it
    if opts.split_column and "split_column" in task.options and not has_split:
        raise task.error("options.split_column", f"{task.path} has no column '{opts.split_column}'")
    for row_no, row in enumerate(rows, start=2):  # the header is row 1
        where = f"{task.path}, row {row_no}"
        rel = (row.get(opts.path_column) or "").strip()
        if not rel:
            problems.report(where, f"empty '{opts.path_column}'")
            continue
        split = None
        if has_split:
            raw_split = (row.get(opts.split_column) or "").strip().lower()
            split = _SPLIT_NAMES.get(raw_split)
            if raw_split and split is None:
                problems.report(
                    where, f"split '{raw_split}' is not one of train, val (validation), test"
                )
                continue
        yield CsvRow(where, root / rel, split, row)


def _read_csv(
    task: TaskConfig,
    problems: Problems,
    opts: Any,  # a CSV reader's options: path_column, split_column, images_root
    label: tuple[str, str] | None,  # (column, the option that names it); None: no labels
    parse_label: CellLabels,
) -> list[Record]:
    """Records of a CSV's rows; ``parse_label`` turns the label cell into targets or a
    problem (no label column when ``label`` is None)."""
    records = []
    for row in csv_rows(task, problems, opts, [label] if label is not None else []):
        cell = (row.cells.get(label[0]) or "").strip() if label is not None else ""
        targets = parse_label(cell)
        if isinstance(targets, str):
            problems.report(row.where, targets)
            continue
        records.append(Record(image=ImageRef(row.image), split=row.split, targets=targets))
    if not records and not problems.skipped:
        raise DataError(str(task.path), "the CSV lists no images", task=task.name)
    return records


def _csv_label(value: str, class_index: dict[str, int]) -> int | str:
    """A class index, or the problem as a string."""
    if value in class_index:
        return class_index[value]
    try:
        index = int(value)
    except ValueError:
        names = ", ".join(class_index)
        return f"label '{value}' is neither a class name ({names}) nor a class index"
    if not 0 <= index < len(class_index):
        n = len(class_index)
        return f"label {index} is out of range for {n} classes (0..{n - 1})"
    return index


# --- class folders ---------------------------------------------------------------------


@dataclass(frozen=True)
class ClassFoldersOptions:
    """No options: the folder names are the class names."""


def read_class_folders(task: TaskConfig, problems: Problems) -> list[Record]:
    """One sub-folder per class name; every image file in it is one example of that class."""
    parse_options(task, ClassFoldersOptions)
    _require_dir(task, task.path, "path")
    class_index = {name: i for i, name in enumerate(task.classes)}
    folders = sorted(p for p in task.path.iterdir() if p.is_dir() and not p.name.startswith("."))
    records = []
    for folder in folders:
        if folder.name not in class_index:
            raise DataError(
                str(folder),
                f"folder '{folder.name}' is not one of the task's classes "
                f"({', '.join(task.classes)}); add it to 'classes' or move it out of {task.path}",
                task=task.name,
            )
        images, others = _image_files(folder)
        _warn_ignored(folder, others)
        records += [
            Record(image=ImageRef(p), targets={"label": class_index[folder.name]})
            for p in images.values()
        ]
    missing = [c for c in task.classes if not (task.path / c).is_dir()]
    if missing:
        logger.warning("%s: no folder for classes %s", task.path, ", ".join(missing))
    if not records:
        raise DataError(str(task.path), "no images found in class folders", task=task.name)
    return records


# --- mask folder -----------------------------------------------------------------------


@dataclass(frozen=True)
class MaskFolderOptions:
    images: str = "images"  # sub-folder of `path` with the images
    masks: str = "masks"  # sub-folder of `path` with the masks
    mask_suffix: str = ""  # a mask's stem is the image's stem plus this, e.g. "_mask"


def read_mask_folder(task: TaskConfig, problems: Problems) -> list[Record]:
    """Images and class-index masks in two folders, paired by file stem."""
    opts = parse_options(task, MaskFolderOptions)
    _require_dir(task, task.path, "path")
    image_dir, mask_dir = task.path / opts.images, task.path / opts.masks
    _require_dir(task, image_dir, "options.images")
    _require_dir(task, mask_dir, "options.masks")
    images, other_images = _image_files(image_dir)
    masks_by_stem, other_masks = _image_files(mask_dir)
    _warn_ignored(image_dir, other_images)
    _warn_ignored(mask_dir, other_masks)
    masks: dict[str, Path] = {}
    for stem, path in masks_by_stem.items():
        if opts.mask_suffix and not stem.endswith(opts.mask_suffix):
            problems.report(str(path), f"mask file name does not end with '{opts.mask_suffix}'")
            continue
        masks[stem[: len(stem) - len(opts.mask_suffix)]] = path
    records = []
    for stem, path in images.items():
        if stem not in masks:
            problems.report(str(path), f"no mask '{stem}{opts.mask_suffix}.*' in {mask_dir}")
            continue
        records.append(Record(image=ImageRef(path), targets={"mask": ImageRef(masks[stem])}))
    for stem in sorted(set(masks) - set(images)):
        problems.report(str(masks[stem]), f"mask has no image '{stem}.*' in {image_dir}")
    if not records and not problems.skipped:
        raise DataError(str(image_dir), "no images found", task=task.name)
    return records


# --- Pascal VOC ------------------------------------------------------------------------


@dataclass(frozen=True)
class VocOptions:
    annotations: str = "Annotations"
    images: str = "JPEGImages"
    image_sets: str = "ImageSets/Main"  # optional {train,val,test}.txt lists of image ids


def read_voc(task: TaskConfig, problems: Problems) -> list[Record]:
    """Pascal VOC XML boxes. Corners are used as given (VOC's 1-based corners shift by < 1 px)."""
    opts = parse_options(task, VocOptions)
    _require_dir(task, task.path, "path")
    ann_dir, image_dir = task.path / opts.annotations, task.path / opts.images
    _require_dir(task, ann_dir, "options.annotations")
    _require_dir(task, image_dir, "options.images")
    images, _ = _image_files(image_dir)
    split_of = _voc_splits(task.path / opts.image_sets, task)
    class_index = {name: i for i, name in enumerate(task.classes)}
    records = []
    xml_stems = set()
    for xml in sorted(ann_dir.glob("*.xml")):
        xml_stems.add(xml.stem)
        parsed = _parse_voc_xml(xml, class_index)
        if isinstance(parsed, str):
            problems.report(str(xml), parsed)
            continue
        filename, boxes, labels = parsed
        image = images.get(xml.stem) or images.get(Path(filename).stem)
        if image is None:
            problems.report(str(xml), f"no image '{xml.stem}.*' in {image_dir}")
            continue
        records.append(
            Record(
                image=ImageRef(image),
                split=split_of.get(xml.stem),
                targets={"boxes": tuple(boxes), "box_labels": tuple(labels)},
            )
        )
    for stem in sorted(set(split_of) - xml_stems):
        problems.report(str(task.path / opts.image_sets), f"lists '{stem}', which has no XML file")
    unlisted = sum(1 for r in records if r.split is None)
    if split_of and unlisted:
        logger.info(
            "%s: %d annotated images are in no split list; splitting them by seed",
            ann_dir,
            unlisted,
        )
    if not records and not problems.skipped:
        raise DataError(str(ann_dir), "no XML annotation files found", task=task.name)
    return records


def _voc_splits(sets_dir: Path, task: TaskConfig) -> dict[str, str]:
    split_of: dict[str, str] = {}
    for split in SPLITS:
        file = sets_dir / f"{split}.txt"
        if not file.is_file():
            continue
        for line in file.read_text(encoding="utf-8").splitlines():
            stem = line.split()[0] if line.strip() else ""
            if not stem:
                continue
            if stem in split_of and split_of[stem] != split:
                raise DataError(
                    str(file), f"'{stem}' is also listed in {split_of[stem]}.txt", task=task.name
                )
            split_of[stem] = split
    return split_of


def _parse_voc_xml(
    xml: Path, class_index: dict[str, int]
) -> tuple[str, list[Box], list[int]] | str:
    """(filename, boxes, labels), or the problem as a string."""
    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, OSError) as exc:
        return f"cannot parse XML: {exc}"
    boxes, labels = [], []
    for number, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if name not in class_index:
            return (
                f"object {number} has class '{name}', which is not one of the task's classes "
                f"({', '.join(class_index)})"
            )
        bndbox = obj.find("bndbox")
        try:
            if bndbox is None:
                raise ValueError("no <bndbox>")
            box = tuple(float(bndbox.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            return f"object {number} ('{name}') has no valid <bndbox> xmin/ymin/xmax/ymax"
        boxes.append(box)
        labels.append(class_index[name])
    return (root.findtext("filename") or "").strip(), boxes, labels


# --- COCO ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CocoOptions:
    images_root: str = ""  # empty: the JSON file's folder


def read_coco(task: TaskConfig, problems: Problems) -> list[Record]:
    """COCO detection JSON: ``bbox`` [x, y, w, h] becomes [x_min, y_min, x_max, y_max]."""
    opts = parse_options(task, CocoOptions)
    _require_file(task, task.path, "path")
    root = _resolve(task, opts.images_root, task.path.parent)
    _require_dir(task, root, "options.images_root")
    try:
        doc = json.loads(task.path.read_text(encoding="utf-8"))
        images = {img["id"]: img["file_name"] for img in doc["images"]}
        categories = {cat["id"]: cat["name"] for cat in doc.get("categories", [])}
        annotations = doc.get("annotations", [])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(
            str(task.path), f"not a COCO detection file: {exc!r}", task=task.name
        ) from exc
    class_index = {name: i for i, name in enumerate(task.classes)}
    unknown = sorted({name for name in categories.values() if name not in class_index})
    if unknown:
        raise DataError(
            str(task.path),
            f"categories {', '.join(unknown)} are not among the task's classes "
            f"({', '.join(task.classes)})",
            task=task.name,
        )
    boxes: dict[Any, list[Box]] = {image_id: [] for image_id in images}
    labels: dict[Any, list[int]] = {image_id: [] for image_id in images}
    bad_images: set[Any] = set()
    for number, ann in enumerate(annotations):
        where = f"{task.path}, annotations[{number}]"
        parsed = _coco_box(ann, images, categories)
        if isinstance(parsed, str):
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            problems.report(where, parsed)
            if image_id in images:
                bad_images.add(image_id)
            continue
        image_id, box, category = parsed
        boxes[image_id].append(box)
        labels[image_id].append(class_index[categories[category]])
    return [
        Record(
            image=ImageRef(root / file_name),
            targets={"boxes": tuple(boxes[image_id]), "box_labels": tuple(labels[image_id])},
        )
        for image_id, file_name in sorted(images.items(), key=lambda kv: str(kv[1]))
        if image_id not in bad_images
    ]


def _coco_box(
    ann: Any, images: dict[Any, str], categories: dict[Any, str]
) -> tuple[Any, Box, Any] | str:
    if not isinstance(ann, dict):
        return "annotation is not an object"
    if ann.get("image_id") not in images:
        return f"image_id {ann.get('image_id')!r} is not in 'images'"
    if ann.get("category_id") not in categories:
        return f"category_id {ann.get('category_id')!r} is not in 'categories'"
    bbox = ann.get("bbox")
    if not (
        isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)
    ):
        return f"bbox must be [x, y, width, height], got {bbox!r}"
    x, y, w, h = (float(v) for v in bbox)
    return ann["image_id"], (x, y, x + w, y + h), ann["category_id"]


register_reader("npz", "classification", read_npz, NpzOptions)
register_reader("npz", "multilabel", read_npz_multilabel, NpzOptions)
register_reader("csv", "classification", read_csv, CsvOptions)
register_reader("csv", "multilabel", read_csv_multilabel, MultiLabelCsvOptions)
register_reader("class-folders", "classification", read_class_folders, ClassFoldersOptions)
register_reader("mask-folder", "segmentation", read_mask_folder, MaskFolderOptions)
register_reader("voc", "detection", read_voc, VocOptions)
register_reader("coco", "detection", read_coco, CocoOptions)

# Formats in their own modules register themselves on import (after the names they use).
from umedpt.data import dicom as _dicom  # noqa: E402, F401
from umedpt.data import nifti as _nifti  # noqa: E402, F401
from umedpt.data import unlabelled as _unlabelled  # noqa: E402, F401
