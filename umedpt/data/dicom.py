"""DICOM sites (``format = "dicom"``): hospital images as stored, read with pydicom.

``path`` is a folder of DICOM files (any depth, any names; files that are not DICOM are
skipped and counted) or a CSV manifest (a ``.csv`` file). Options (``[tasks.options]``):

- every task type: ``window`` ([center, width] in the pixels' rescaled units, e.g. HU
  ``[-600, 1500]`` for a CT lung window; empty: the file's VOI LUT or WindowCenter/WindowWidth,
  else the image's own min..max), ``frame`` (-1: each frame of a multi-frame file is a
  sample; k: only frame k, 0-based), ``group_by`` ("patient" or "study": what stays in one
  split), and for a manifest ``path_column`` ("path"), ``split_column`` ("split", optional
  column) and ``images_root`` ("" = the CSV's folder).
- classification: ``label_column`` ("label", a class name or index); for a folder, ``labels``
  names a CSV with that column and a ``SOPInstanceUID`` or ``path`` column (relative to
  ``path``) saying which file each label belongs to.
- multilabel: as classification, with ``labels_column`` ("labels") and ``separator`` ("|").
- segmentation: a manifest with ``mask_column`` ("mask"): a PNG class map per image, or a
  2-D NIfTI mask (``.nii``/``.nii.gz``, 2-D or one slice, in the image's own pixel grid:
  :func:`umedpt.data.nifti.mask_plane` says which voxel order).
- self-supervised (where that task type exists): a folder or manifest, no labels.

Pixels: the modality LUT (RescaleSlope/Intercept), then the window, MONOCHROME1 inverted,
RGB and YBR_* converted to RGB by pydicom. Compressed transfer syntaxes decode through
pydicom's plugins (pylibjpeg & co: ``pip install 'umedpt-fl[dicom]'``).

Identifiers (patient name and ID, birth date, accession number, UIDs) are read only here and
never stored: a record's split group is a keyed pseudonym (:mod:`umedpt.data.pseudonyms`),
errors name files and DICOM keywords, never their values, and pydicom's own warnings (which
may quote a malformed value) are silenced while reading.
"""

from __future__ import annotations

import csv
import logging
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pydicom
import pydicom.pixels
import pydicom.uid
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from umedpt.config import TaskConfig
from umedpt.data.dicom_index import HeaderFacts, HeaderIndex
from umedpt.data.images import array_to_rgb
from umedpt.data.pseudonyms import Pseudonymizer, site_pseudonymizer
from umedpt.data.readers import Problems, parse_options, register_reader
from umedpt.data.samples import ImageRef, Record
from umedpt.errors import DataError

logger = logging.getLogger(__name__)

EXTRA_HINT = "install the DICOM codecs: pip install 'umedpt-fl[dicom]'"
IDENTIFIER_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)
SUMMARY_KEYWORDS = ("Modality", "Manufacturer", "PhotometricInterpretation", "BitsStored")
_HEADER_TAGS = [
    *IDENTIFIER_KEYWORDS,
    *SUMMARY_KEYWORDS,
    "Rows",
    "Columns",
    "NumberOfFrames",
]
_GROUP_BY = {"patient": "PatientID", "study": "StudyInstanceUID"}
# what the header index keeps, as pseudonyms (HeaderFacts fields -> DICOM keywords)
_PSEUDONYMISED = {**_GROUP_BY, "sop": "SOPInstanceUID"}
_LISTED = 3  # skipped file names in a warning


# --- options ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DicomOptions:
    window: tuple[float, ...] = ()  # (center, width); (): the file's own VOI, else min..max
    frame: int = -1  # -1: every frame is a sample; k: only frame k
    group_by: str = "patient"  # patient | study
    path_column: str = "path"  # manifest only
    split_column: str = "split"  # manifest only, optional column
    images_root: str = ""  # manifest only; "" = the CSV's folder


@dataclass(frozen=True)
class DicomClassificationOptions(DicomOptions):
    label_column: str = "label"
    labels: str = ""  # folder input: CSV keyed by SOPInstanceUID or path


@dataclass(frozen=True)
class DicomMultilabelOptions(DicomOptions):
    labels_column: str = "labels"
    separator: str = "|"
    labels: str = ""  # folder input: CSV keyed by SOPInstanceUID or path


@dataclass(frozen=True)
class DicomSegmentationOptions(DicomOptions):
    mask_column: str = "mask"


def _options(task: TaskConfig, cls: type[DicomOptions]) -> DicomOptions:
    """``parse_options``, after checking ``window`` (TOML gives a list, the field is a tuple)."""
    raw = dict(task.options)
    if "window" in raw:
        window = raw["window"]
        if (
            not isinstance(window, list)
            or len(window) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in window)
        ):
            raise task.error("options.window", f"must be [center, width], got {window!r}")
        if not window[1] > 0:
            raise task.error(
                "options.window", f"width must be positive, got {window[1]!r} (window = {window})"
            )
        raw["window"] = (float(window[0]), float(window[1]))
    opts = parse_options(replace(task, options=MappingProxyType(raw)), cls)
    if opts.group_by not in _GROUP_BY:
        raise task.error(
            "options.group_by", f"must be one of {', '.join(_GROUP_BY)}, got {opts.group_by!r}"
        )
    if opts.frame < -1:
        raise task.error(
            "options.frame", f"must be -1 (all frames) or a frame index, got {opts.frame}"
        )
    return opts


# --- pixels ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DicomDecoder:
    """Decodes a DICOM file (or one frame of it) to uint8 RGB; see :func:`decode_dicom`."""

    window: tuple[float, ...] = ()

    def read_image(self, ref: ImageRef) -> np.ndarray:
        return decode_dicom(ref.path, frame=ref.index, window=self.window, source=str(ref))

    def read_mask(self, ref: ImageRef) -> np.ndarray:
        raise DataError(str(ref), "a DICOM file cannot be a mask here; save masks as PNG")


def decode_dicom(
    path: Path, *, frame: int | None = None, window: tuple[float, ...] = (), source: str = ""
) -> np.ndarray:
    """One frame of a DICOM file as uint8 RGB ``(H, W, 3)``, windowed for display."""
    source = source or str(path)
    ds = _dcmread(path, source)
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise DataError(source, "has no pixel data (PixelData)")
    arr = _pixels(ds, frame, source)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3:  # colour: pydicom converted YBR_* to RGB
        return array_to_rgb(arr, source)
    values = pydicom.pixels.apply_modality_lut(arr, ds).astype(np.float64)
    grey = _windowed(values, ds, window, source)
    if photometric == "MONOCHROME1":  # 0 is white: invert so that every site's bone is bright
        grey = 255 - grey
    return np.repeat(grey[:, :, None], 3, axis=2)


def _pixels(ds: Dataset, frame: int | None, source: str) -> np.ndarray:
    syntax = _transfer_syntax(ds)
    syntax_name = f"{syntax.name} ({syntax})" if syntax is not None else "unknown transfer syntax"
    if syntax is not None and syntax.is_compressed:
        try:
            available = pydicom.pixels.get_decoder(syntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise DataError(
                source,
                f"TransferSyntaxUID: pixel data compressed as {syntax_name}, which no installed "
                f"plugin decodes; {EXTRA_HINT}",
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pydicom.pixels.pixel_array(ds, index=frame)
    except (RuntimeError, ValueError, NotImplementedError, AttributeError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataError(
            source,
            f"TransferSyntaxUID: cannot decode pixel data compressed as {syntax_name} ({reason}); "
            f"if the file is intact, {EXTRA_HINT}",
        ) from None
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):  # frames x H x W: a frame was not chosen
        arr = arr[0]
    return arr


def _transfer_syntax(ds: Dataset) -> pydicom.uid.UID | None:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return pydicom.uid.UID(str(syntax)) if syntax else None


def _windowed(
    values: np.ndarray, ds: Dataset, window: tuple[float, ...], source: str
) -> np.ndarray:
    """Rescaled values -> uint8 through the site's window, the file's VOI, else min..max."""
    if window:
        center, width = window
    elif "VOILUTSequence" in ds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lut = pydicom.pixels.apply_voi_lut(values, ds, index=0, prefer_lut=True)
        return array_to_rgb(np.asarray(lut, dtype=np.float64), source)[:, :, 0]
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        if not width > 0:
            raise DataError(
                source,
                f"WindowWidth is {width:g}; a window needs a positive width: fix the file or set "
                "options.window = [center, width] in the site file",
            )
    else:
        return array_to_rgb(values, source)[:, :, 0]  # min..max of this image
    low = center - width / 2
    scaled = np.clip((values - low) / width, 0.0, 1.0)
    return np.round(scaled * 255.0).astype(np.uint8)


def _first(value: Any) -> float:
    """The first of a multi-valued window attribute (files may list several windows)."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


# --- headers ---------------------------------------------------------------------------


def _dcmread(path: Path, source: str, *, header_only: bool = False) -> Dataset:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warnings may quote header values
            if header_only:
                return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
            return pydicom.dcmread(path)
    except InvalidDicomError:
        raise DataError(source, "not a DICOM file (no 'DICM' marker)") from None
    except FileNotFoundError:
        raise DataError(source, "file not found") from None
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(source, f"cannot read DICOM file ({type(exc).__name__})") from None


@dataclass(frozen=True)
class _Header:
    """What the reader needs of one file: held only while reading, never stored."""

    path: Path
    ds: Dataset

    def text(self, keyword: str) -> str:
        value = self.ds.get(keyword)
        return "" if value is None else str(value).strip()

    @property
    def frames(self) -> int:
        try:
            return max(1, int(self.ds.get("NumberOfFrames", 1) or 1))
        except (TypeError, ValueError):
            return 1


def _folder_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (sorted), hidden ones (``.name``) left out.

    Run on every load, cached or not: sorted by ``parts`` (Path's own order, without its
    slow comparisons) and hidden names checked before the ``stat`` of ``is_file``.
    """
    skip = len(folder.parts)
    files = [
        p
        for p in folder.rglob("*")
        if not any(part.startswith(".") for part in p.parts[skip:]) and p.is_file()
    ]
    files.sort(key=lambda p: p.parts)
    return files


def _folder_headers(folder: Path) -> tuple[list[_Header], list[Path]]:
    """DICOM headers of every file under ``folder`` (sorted), and the files that are not DICOM."""
    headers, others = [], []
    for file in _folder_files(folder):
        try:
            headers.append(_Header(file, _dcmread(file, str(file), header_only=True)))
        except DataError:
            others.append(file)
    return headers, others


def _facts_parser(pseudonyms: Pseudonymizer) -> Callable[[Path], HeaderFacts]:
    """Parses one header into what the reader needs, identifiers as pseudonyms only."""

    def parse(path: Path) -> HeaderFacts:
        header = _Header(path, _dcmread(path, str(path), header_only=True))
        keys = {
            kind: pseudonyms.key(kind, value) if (value := header.text(keyword)) else ""
            for kind, keyword in _PSEUDONYMISED.items()
        }
        return HeaderFacts(frames=header.frames, **keys)

    return parse


@dataclass(frozen=True)
class _File:
    """One DICOM file as the reader sees it: its path and its header's facts."""

    path: Path
    facts: HeaderFacts


# --- reading ---------------------------------------------------------------------------

# A row of a labels CSV or manifest -> the record's targets, or the problem as a string.
LabelFn = Callable[[dict[str, str]], dict[str, Any] | str]


@dataclass(frozen=True)
class _Listed:
    """One file to read: its header's facts, its targets and the split its manifest gave it."""

    header: _File
    targets: dict[str, Any]
    split: str | None = None


def _read(
    task: TaskConfig, problems: Problems, cls: type[DicomOptions], label_fn: LabelFn | None
) -> list[Record]:
    opts = _options(task, cls)
    if task.state_dir is None:
        raise task.error(
            "path", "a DICOM task needs its site's state folder (load it with load_site_config)"
        )
    if not (task.path.is_dir() or task.path.is_file()):
        raise task.error("path", f"neither a folder of DICOM files nor a CSV manifest: {task.path}")
    pseudonyms = site_pseudonymizer(task.state_dir)
    index = _Index(HeaderIndex(task.state_dir, task.name, pseudonyms), pseudonyms)
    if task.path.is_dir():
        listed = _from_folder(task, problems, opts, label_fn, index)
    else:
        listed = _from_manifest(task, problems, opts, label_fn, index)
    index.headers.save()
    logger.debug(
        "task '%s': %d DICOM headers parsed, the rest from %s",
        task.name,
        index.headers.parsed,
        index.headers.file,
    )
    return _records(task, problems, opts, listed, pseudonyms)


class _Index:
    """The task's header index and the pseudonymizer its facts are keyed with."""

    def __init__(self, headers: HeaderIndex, pseudonyms: Pseudonymizer) -> None:
        self.headers = headers
        self.pseudonyms = pseudonyms
        self._parse = _facts_parser(pseudonyms)

    def file(self, path: Path) -> _File:
        """``path``'s facts (from the index while unchanged); ``facts.error``: not DICOM."""
        return _File(path, self.headers.facts(path, self._parse))


def _from_folder(
    task: TaskConfig,
    problems: Problems,
    opts: DicomOptions,
    label_fn: LabelFn | None,
    index: _Index,
) -> list[_Listed]:
    files = [index.file(p) for p in _folder_files(task.path)]
    headers = [f for f in files if not f.facts.error]
    others = [f.path for f in files if f.facts.error]
    if others:
        logger.warning(
            "task '%s': skipped %d files under %s that are not DICOM (e.g. %s)",
            task.name,
            len(others),
            task.path,
            ", ".join(str(p.relative_to(task.path)) for p in others[:_LISTED]),
        )
    if not headers:
        raise DataError(str(task.path), "no DICOM files found", task=task.name)
    if label_fn is None:
        return [_Listed(h, {}) for h in headers]
    labels_file = getattr(opts, "labels", "")
    if not labels_file:
        raise task.error(
            "options.labels",
            "a folder of DICOM files needs a labels CSV (a 'SOPInstanceUID' or 'path' column "
            "and the label column), or make 'path' a CSV manifest",
        )
    by_uid, by_path, csv_file = _labels_table(task, labels_file, index.pseudonyms)
    listed = []
    for header in headers:
        row = by_uid.get(header.facts.sop) if header.facts.sop else None
        if row is None and by_path:
            row = by_path.get(header.path.relative_to(task.path).as_posix())
        if row is None:
            problems.report(
                str(header.path),
                f"missing label: no row of {csv_file} has this file's SOPInstanceUID or its path",
            )
            continue
        targets = label_fn(row)
        if isinstance(targets, str):
            problems.report(f"{csv_file} (for {header.path})", targets)
            continue
        listed.append(_Listed(header, targets))
    return listed


def _labels_table(
    task: TaskConfig, labels_file: str, pseudonyms: Pseudonymizer
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]], Path]:
    """The labels CSV's rows by the pseudonym of their SOPInstanceUID, and by path."""
    file = (task.source.parent / labels_file).resolve()
    header, rows = _csv_rows(task, file, "options.labels")
    if "SOPInstanceUID" not in header and "path" not in header:
        raise task.error("options.labels", f"{file} needs a 'SOPInstanceUID' or a 'path' column")
    by_uid = {
        pseudonyms.key("sop", uid): r
        for r in rows
        if (uid := (r.get("SOPInstanceUID") or "").strip())
    }
    by_path = {Path(r["path"].strip()).as_posix(): r for r in rows if (r.get("path") or "").strip()}
    return by_uid, by_path, file


def _csv_rows(
    task: TaskConfig, file: Path, field_name: str
) -> tuple[list[str], list[dict[str, str]]]:
    if not file.is_file():
        raise task.error(field_name, f"file not found: {file}")
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(str(file), f"cannot read CSV: {exc}", task=task.name) from exc


def _from_manifest(
    task: TaskConfig,
    problems: Problems,
    opts: DicomOptions,
    label_fn: LabelFn | None,
    index: _Index,
) -> list[_Listed]:
    from umedpt.data.readers import csv_rows

    root = (  # what the path and mask columns are relative to
        (task.source.parent / opts.images_root).resolve() if opts.images_root else task.path.parent
    )
    listed = []
    for row in csv_rows(task, problems, opts):
        where, file, split = row.where, row.image, row.split
        targets = label_fn(row.cells) if label_fn is not None else {}
        if isinstance(targets, str):
            problems.report(where, targets)
            continue
        try:
            dicom_header = index.file(file)
        except DataError as exc:  # the file is missing
            problems.report(f"{where} ({exc.source})", exc.problem)
            continue
        if dicom_header.facts.error:
            problems.report(f"{where} ({file})", dicom_header.facts.error)
            continue
        targets = {k: _mask_ref(root / v) if k == "mask" else v for k, v in targets.items()}
        listed.append(_Listed(dicom_header, targets, split))
    if not listed and not problems.skipped:
        raise DataError(str(task.path), "the manifest lists no DICOM files", task=task.name)
    return listed


def _mask_ref(path: Path) -> ImageRef:
    """A segmentation mask: a PNG class map, or a 2-D NIfTI mask (see ``nifti.mask_plane``)."""
    from umedpt.data.nifti import PlaneMaskDecoder, volume_stem

    return ImageRef(path, decoder=PlaneMaskDecoder() if volume_stem(path) else None)


def _records(
    task: TaskConfig,
    problems: Problems,
    opts: DicomOptions,
    listed: list[_Listed],
    pseudonyms: Pseudonymizer,
) -> list[Record]:
    decoder = DicomDecoder(window=opts.window)
    id_keyword = _GROUP_BY[opts.group_by]
    records, ungrouped = [], 0
    for item in listed:
        group = item.header.facts.pseudonym(opts.group_by)
        if not group:  # no identifier: the file is its own group (nothing to keep together)
            ungrouped += 1
            group = pseudonyms.key("file", str(item.header.path))
        frames = item.header.facts.frames
        if opts.frame >= 0:
            if opts.frame >= frames:
                problems.report(
                    str(item.header.path),
                    f"NumberOfFrames: options.frame = {opts.frame} but the file has {frames}",
                )
                continue
            chosen = [opts.frame] if frames > 1 else [None]
        else:
            chosen = list(range(frames)) if frames > 1 else [None]
        if len(chosen) > 1 and "mask" in item.targets:
            problems.report(
                str(item.header.path),
                f"NumberOfFrames: a multi-frame file ({frames}) has one mask; choose options.frame",
            )
            continue
        for frame in chosen:
            ref = ImageRef(
                item.header.path,
                member=None if frame is None else "frame",
                index=frame,
                decoder=decoder,
            )
            records.append(Record(image=ref, split=item.split, targets=item.targets, group=group))
    if ungrouped:
        logger.warning(
            "task '%s': %d DICOM files have no %s; each is split on its own",
            task.name,
            ungrouped,
            id_keyword,
        )
    return records


# --- the task types --------------------------------------------------------------------


def _class_index(task: TaskConfig) -> dict[str, int]:
    return {name: i for i, name in enumerate(task.classes)}


def read_dicom_classification(task: TaskConfig, problems: Problems) -> list[Record]:
    """DICOM images with one class each (manifest column or labels CSV)."""
    from umedpt.data.readers import _csv_label

    opts = _options(task, DicomClassificationOptions)
    index = _class_index(task)
    column = opts.label_column  # type: ignore[attr-defined]

    def label(row: dict[str, str]) -> dict[str, Any] | str:
        cell = (row.get(column) or "").strip()
        if not cell:
            return f"missing label: empty '{column}'"
        value = _csv_label(cell, index)
        return value if isinstance(value, str) else {"label": value}

    return _read(task, problems, DicomClassificationOptions, label)


def read_dicom_multilabel(task: TaskConfig, problems: Problems) -> list[Record]:
    """DICOM images with a set of positive classes each (``A|B``; an empty cell means none)."""
    from umedpt.data.readers import _csv_label

    opts = _options(task, DicomMultilabelOptions)
    index = _class_index(task)
    column, sep = opts.labels_column, opts.separator  # type: ignore[attr-defined]

    def labels(row: dict[str, str]) -> dict[str, Any] | str:
        if column not in row:
            return f"missing label: no column '{column}'"
        positives = set()
        for part in (row.get(column) or "").split(sep):
            if part.strip():
                value = _csv_label(part.strip(), index)
                if isinstance(value, str):
                    return value
                positives.add(value)
        return {"labels": tuple(sorted(positives))}

    return _read(task, problems, DicomMultilabelOptions, labels)


def read_dicom_segmentation(task: TaskConfig, problems: Problems) -> list[Record]:
    """A manifest of DICOM images, each with a PNG or 2-D NIfTI class map in ``mask``."""
    opts = _options(task, DicomSegmentationOptions)
    column = opts.mask_column  # type: ignore[attr-defined]
    if task.path.is_dir():
        raise task.error("path", "DICOM segmentation needs a CSV manifest with a mask column")

    def mask(row: dict[str, str]) -> dict[str, Any] | str:
        cell = (row.get(column) or "").strip()
        return {"mask": cell} if cell else f"missing label: empty '{column}'"

    return _read(task, problems, DicomSegmentationOptions, mask)


def read_dicom_unlabelled(task: TaskConfig, problems: Problems) -> list[Record]:
    """DICOM images without labels (for self-supervised tasks)."""
    return _read(task, problems, DicomOptions, None)


# --- what check-site shows -------------------------------------------------------------


def header_summary(task: TaskConfig) -> dict[str, Any]:
    """Counts per header value (modality, size, ...) and of identifiers seen, never their values.

    ``identifiers_seen`` counts the files carrying each identifying attribute: they were read
    (PatientID/StudyInstanceUID for the split key) and kept at the site.
    ``paths_naming_identifiers`` counts files whose own path contains one of their
    identifiers (PACS exports often name files by UID): such paths appear in the site's
    own log and preview titles, so an operator may want to rename them.
    """
    files = _summary_files(task)
    counts: dict[str, Counter[str]] = {
        k: Counter() for k in (*SUMMARY_KEYWORDS, "Size", "TransferSyntax")
    }
    seen: Counter[str] = Counter()
    in_paths = 0
    for header in files:
        for keyword in SUMMARY_KEYWORDS:
            counts[keyword][header.text(keyword) or "(none)"] += 1
        counts["Size"][f"{header.text('Columns')}x{header.text('Rows')}"] += 1
        syntax = _transfer_syntax(header.ds)
        counts["TransferSyntax"][syntax.name if syntax is not None else "(none)"] += 1
        values = [header.text(k) for k in IDENTIFIER_KEYWORDS]
        seen.update(k for k, v in zip(IDENTIFIER_KEYWORDS, values, strict=True) if v)
        path = str(header.path)
        if any(len(v) >= 4 and v in path for v in values):
            in_paths += 1
    return {
        "files": len(files),
        **{k: dict(c.most_common()) for k, c in counts.items()},
        "identifiers_seen": dict(seen),
        "paths_naming_identifiers": in_paths,
    }


def _summary_files(task: TaskConfig) -> list[_Header]:
    if task.path.is_dir():
        return _folder_headers(task.path)[0]
    opts = _options(task, _options_class(task))
    _, rows = _csv_rows(task, task.path, "path")
    root = (
        (task.source.parent / opts.images_root).resolve() if opts.images_root else task.path.parent
    )
    out = []
    for row in rows:
        rel = (row.get(opts.path_column) or "").strip()
        if rel:
            try:
                out.append(_Header(root / rel, _dcmread(root / rel, rel, header_only=True)))
            except DataError:
                continue
    return out


def _options_class(task: TaskConfig) -> type[DicomOptions]:
    return {
        "classification": DicomClassificationOptions,
        "multilabel": DicomMultilabelOptions,
        "segmentation": DicomSegmentationOptions,
    }.get(task.type, DicomOptions)


def register() -> None:
    """Register ``dicom`` for every task type it fits (self-supervised where it exists)."""
    from umedpt.tasks import TASK_TYPES

    register_reader(
        "dicom", "classification", read_dicom_classification, DicomClassificationOptions
    )
    register_reader("dicom", "multilabel", read_dicom_multilabel, DicomMultilabelOptions)
    register_reader("dicom", "segmentation", read_dicom_segmentation, DicomSegmentationOptions)
    if "self-supervised" in TASK_TYPES:
        register_reader("dicom", "self-supervised", read_dicom_unlabelled, DicomOptions)


register()
