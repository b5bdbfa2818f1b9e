"""NIfTI volumes (``format = "nifti"``, read with nibabel) as 2-D samples: one per slice.

Research volumes and their segmentations are stored as NIfTI (``.nii``, ``.nii.gz``); the
encoder sees 2-D images, so each chosen slice along ``slice_axis`` is one sample. Image and
mask are both turned to the closest canonical (RAS+) orientation
(``nibabel.as_closest_canonical``) before slicing, so a mask stored in another voxel order
than its image still lands on the same pixels, and ``slice_axis`` means the same anatomy in
every file: 0 sagittal, 1 coronal, 2 axial. Slices are shown head (or front) up.

Layouts (paths relative to the site file's folder, like ``path``):

- segmentation: ``path`` holds ``images/`` and ``masks/``; the image ``<case><image_suffix>``
  (``image_suffix`` e.g. nnU-Net's ``_0000``) pairs with the mask ``<case><mask_suffix>``, a
  volume of the same shape holding class indices (0 = background). Options ``images``
  ("images"), ``masks`` ("masks"), ``image_suffix`` (""), ``mask_suffix`` ("").
- classification: ``path`` is a CSV with one row per volume; every slice of a volume has the
  volume's label. Options ``path_column`` ("path"), ``label_column`` ("label"),
  ``split_column`` ("split"), ``images_root`` ("" = the CSV's folder), as for ``csv``.
- self-supervised (no labels): either layout: a CSV ``path`` gives its ``path_column``'s
  volumes; a folder ``path`` gives every volume under ``path/<images>`` ("images"), or under
  ``path`` itself when there is no such folder. The labelled layouts' options are accepted
  (and unused), so a labelled task becomes an unlabelled one by changing only its ``type``.

Options of both:

- ``slice_axis`` (2): 0 | 1 | 2, or "sagittal" | "coronal" | "axial".
- ``slices`` ("all"): "all" | "foreground" (the slices whose mask has any class) |
  ``{foreground = 1.0, background = 0.2}``: the shares of the slices with and without
  foreground to keep, drawn per volume with the split seed. Classification takes "all".
- ``window`` (none): ``[center, width]`` in the volume's scaled units: Hounsfield units for
  CT, e.g. ``[40, 400]`` soft tissue, ``[-600, 1500]`` lung. Values outside are clipped.
- ``percentiles`` ([0.5, 99.5]): without ``window``, each volume's values between these
  percentiles map to black..white (MR, whose intensities have no absolute scale).

All slices of a volume land in one split: a record's group is its volume (a
``group_pattern`` matches the volume's file name, so it can group a patient's volumes). The
decoded slices go through the site's data cache like every other format; a mask is read at
listing time only when ``slices`` needs to know which slices have foreground.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from umedpt.config import TaskConfig
from umedpt.data.readers import (
    CsvOptions,
    Problems,
    _csv_label,
    _read_csv,
    _require_dir,
    _resolve,
    register_reader,
)
from umedpt.data.samples import ImageRef, Record
from umedpt.errors import DataError

logger = logging.getLogger(__name__)

AXES = ("sagittal", "coronal", "axial")  # canonical (RAS+) axes 0, 1, 2
SUFFIXES = (".nii.gz", ".nii")
DEFAULT_PERCENTILES = (0.5, 99.5)
_PERCENTILE_VOXELS = 2_000_000  # percentiles of a larger volume come from an even subsample
_HELD_VOLUMES = 4  # a volume and its mask, and the pair before (records come volume by volume)

OptionsT = TypeVar("OptionsT", bound="VolumeOptions")


# --- options ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceShares:
    """Which slices become samples: shares of those with and without mask foreground."""

    foreground: float = 1.0
    background: float = 1.0

    @property
    def needs_masks(self) -> bool:
        """Whether choosing needs each slice's foreground (``all`` does not)."""
        return self.foreground < 1 or self.background < 1


@dataclass(frozen=True)
class VolumeOptions:
    """Options every ``nifti`` task has, parsed (see the module docstring for the TOML)."""

    slice_axis: int = 2  # canonical axis: 0 sagittal, 1 coronal, 2 axial
    slices: SliceShares = SliceShares()
    window: tuple[float, float] | None = None  # (center, width); None: percentiles
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES


@dataclass(frozen=True)
class SegmentationOptions(VolumeOptions):
    images: str = "images"
    masks: str = "masks"
    image_suffix: str = ""  # an image's stem is the case plus this, e.g. "_0000" (nnU-Net)
    mask_suffix: str = ""  # a mask's stem is the case plus this


@dataclass(frozen=True)
class ClassificationOptions(VolumeOptions):
    path_column: str = "path"
    label_column: str = "label"  # a class name or a class index
    split_column: str = "split"  # optional column; "" ignores it
    images_root: str = ""  # empty: the CSV file's folder


@dataclass(frozen=True)
class UnlabelledOptions(VolumeOptions):
    """Either layout, read without labels: a labelled task changes only its ``type``."""

    images: str = "images"  # in a folder ``path``: where the volumes are (else ``path``)
    path_column: str = "path"  # in a CSV ``path``
    split_column: str = "split"
    images_root: str = ""
    # The labelled layouts' other options, accepted so that only ``type`` changes; unused.
    masks: str = "masks"
    image_suffix: str = ""
    mask_suffix: str = ""
    label_column: str = "label"


def parse_volume_options(task: TaskConfig, options_cls: type[OptionsT]) -> OptionsT:
    """``task.options`` as ``options_cls``; a bad or unknown key names its field."""
    valid = {f.name for f in fields(options_cls)}
    values: dict[str, Any] = {}
    for key, raw in task.options.items():
        if key not in valid:
            names = ", ".join(sorted(valid))
            raise task.error(
                f"options.{key}", f"unknown option for format 'nifti' (valid: {names})"
            )
        parse = _PARSERS.get(key, _text)
        try:
            values[key] = parse(raw)
        except ValueError as exc:
            raise task.error(f"options.{key}", str(exc)) from None
    if "window" in values and "percentiles" in values:
        raise task.error(
            "options.percentiles",
            "give either a fixed 'window' (CT) or per-volume 'percentiles' (MR), not both",
        )
    return options_cls(**values)


def _text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"must be a string, got {raw!r}")
    return raw


def _axis(raw: Any) -> int:
    if isinstance(raw, str) and raw in AXES:
        return AXES.index(raw)
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < 3:
        return raw
    raise ValueError(f"must be 0, 1, 2 or one of {', '.join(AXES)}, got {raw!r}")


def _share(raw: Any, name: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 <= raw <= 1:
        raise ValueError(f"'{name}' must be a share in [0, 1], got {raw!r}")
    return float(raw)


def _slices(raw: Any) -> SliceShares:
    if raw == "all":
        return SliceShares()
    if raw == "foreground":
        return SliceShares(1.0, 0.0)
    if isinstance(raw, Mapping):
        unknown = sorted(set(raw) - {"foreground", "background"})
        if unknown:
            raise ValueError(f"unknown key '{unknown[0]}' (valid: background, foreground)")
        shares = SliceShares(
            _share(raw.get("foreground", 1.0), "foreground"),
            _share(raw.get("background", 0.0), "background"),
        )
        if shares.foreground == shares.background == 0:
            raise ValueError("keeps no slice: foreground and background are both 0")
        return shares
    raise ValueError(
        'must be "all", "foreground" or a table like {foreground = 1.0, background = 0.2}, '
        f"got {raw!r}"
    )


def _pair(raw: Any, what: str) -> tuple[float, float]:
    if (
        not isinstance(raw, list)
        or len(raw) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in raw)
        or not all(np.isfinite(raw))
    ):
        raise ValueError(f"must be {what}, got {raw!r}")
    return float(raw[0]), float(raw[1])


def _window(raw: Any) -> tuple[float, float]:
    center, width = _pair(raw, "[center, width], e.g. [40, 400] for a CT soft-tissue window")
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width:g} (window = [center, width])")
    return center, width


def _percentiles(raw: Any) -> tuple[float, float]:
    low, high = _pair(raw, "[low, high] percentiles, e.g. [0.5, 99.5]")
    if not 0 <= low < high <= 100:
        raise ValueError(f"needs 0 <= low < high <= 100, got [{low:g}, {high:g}]")
    return low, high


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "slice_axis": _axis,
    "slices": _slices,
    "window": _window,
    "percentiles": _percentiles,
}


# --- volumes ---------------------------------------------------------------------------


def _nibabel() -> Any:
    """nibabel, imported on first use: sites without NIfTI data never pay for it."""
    import nibabel

    return nibabel


def volume_stem(path: Path) -> str | None:
    """The name without ``.nii``/``.nii.gz``; None for a file of another format."""
    lower = path.name.lower()
    for suffix in SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def _open_nifti(path: Path, what: str = "volume") -> Any:
    """A NIfTI image of any shape, header read, voxels not yet (nibabel's proxy)."""
    nib = _nibabel()
    if not path.is_file():
        raise DataError(str(path), f"{what} file not found")
    try:
        img = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataError(str(path), f"cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(str(path), f"not a NIfTI {what} (read as {type(img).__name__})")
    return img


def open_volume(path: Path) -> Any:
    """A NIfTI image with its header read and its voxels not yet (nibabel's proxy)."""
    img = _open_nifti(path)
    shape = img.shape
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)) or 0 in shape:
        raise DataError(str(path), f"expected a 3-D volume, got shape {shape}")
    return img


def canonical_shape(img: Any, path: Path) -> tuple[int, int, int]:
    """The volume's shape after ``as_closest_canonical``, from the header alone."""
    ornt = _nibabel().orientations.io_orientation(img.affine)
    if np.isnan(ornt).any():
        raise DataError(str(path), "its affine (qform/sform) gives no orientation to reorient by")
    shape = [0, 0, 0]
    for axis, (target, _) in enumerate(ornt):
        shape[int(target)] = int(img.shape[axis])
    return shape[0], shape[1], shape[2]


def _canonical_voxels(img: Any, path: Path, *, scaled: bool) -> np.ndarray:
    """The voxels in RAS+ order; ``scaled``: float32 after the header's slope and intercept."""
    nib = _nibabel()
    try:
        canonical = nib.as_closest_canonical(img)
        if scaled:
            data = canonical.get_fdata(dtype=np.float32)
        else:
            data = np.asanyarray(canonical.dataobj)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataError(str(path), f"cannot read the voxels ({type(exc).__name__}: {exc})") from exc
    return data.reshape(data.shape[:3])


def image_volume(
    path: Path, window: tuple[float, float] | None, percentiles: tuple[float, float]
) -> np.ndarray:
    """A volume as uint8 (X, Y, Z), RAS+: windowed, or scaled between its own percentiles."""
    data = _canonical_voxels(open_volume(path), path, scaled=True)
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise DataError(
            str(path), f"volume has {bad} NaN or infinite voxels (of {data.size}); fix or drop it"
        )
    if window is not None:
        center, width = window
        low, high = center - width / 2, center + width / 2
    else:
        flat = data.reshape(-1)
        sample = flat[:: max(1, flat.size // _PERCENTILE_VOXELS)]
        low, high = (float(v) for v in np.percentile(sample, percentiles))
    if high <= low:
        return np.zeros(data.shape, dtype=np.uint8)  # a constant volume
    scaled = (np.clip(data, low, high) - low) * np.float32(255.0 / (high - low))
    return np.round(scaled).astype(np.uint8)


def mask_volume(path: Path, img: Any | None = None) -> np.ndarray:
    """A label volume as integers (X, Y, Z), RAS+; non-integer values are an error."""
    data = _canonical_voxels(img if img is not None else open_volume(path), path, scaled=False)
    return _class_indices(data, path)


def mask_plane(path: Path) -> np.ndarray:
    """A 2-D NIfTI mask (or a one-slice volume) as integers ``(rows, columns)``.

    For a 2-D image stored in another format (a DICOM slice), whose pixels are not
    reoriented: the mask is taken in its voxel order, the first axis running along the
    image's columns and the second along its rows, as ITK-based tools (3D Slicer, ITK-SNAP,
    SimpleITK) write the segmentation of a DICOM slice. A mask written after reorienting the
    image (e.g. from dcm2niix's output) must be flipped back first: a transposed non-square
    mask fails the shape check, a flipped one does not.
    """
    img = _open_nifti(path, "mask")
    shape = tuple(int(n) for n in img.shape)
    if len(shape) < 2 or any(n != 1 for n in shape[2:]) or 0 in shape:
        raise DataError(
            str(path), f"a mask of a 2-D image must be 2-D or a single slice, got shape {shape}"
        )
    try:
        data = np.asanyarray(img.dataobj).reshape(shape[:2])
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataError(str(path), f"cannot read the voxels ({type(exc).__name__}: {exc})") from exc
    return np.ascontiguousarray(_class_indices(data, path).T)


@dataclass(frozen=True)
class PlaneMaskDecoder:
    """The ``FileDecoder`` of a 2-D NIfTI mask beside images of another format (DICOM)."""

    def read_image(self, ref: ImageRef) -> np.ndarray:
        raise DataError(str(ref), "a NIfTI mask cannot be an image here")

    def read_mask(self, ref: ImageRef) -> np.ndarray:
        return mask_plane(ref.path).astype(np.int64)


def _class_indices(data: np.ndarray, path: Path) -> np.ndarray:
    """``data`` as integers; float voxels must hold whole numbers (NIfTI stores many as float)."""
    if np.issubdtype(data.dtype, np.integer):
        return data
    if not np.issubdtype(data.dtype, np.floating):
        raise DataError(str(path), f"a mask must hold class indices, got {data.dtype} voxels")
    if not np.isfinite(data).all() or not np.array_equal(data, np.round(data)):
        raise DataError(str(path), "a mask must hold class indices, found non-integer values")
    return data.astype(np.int32)


def _slice(volume: np.ndarray, axis: int, index: int, ref: ImageRef) -> np.ndarray:
    """One slice, rotated so that up is superior (sagittal, coronal) or anterior (axial)."""
    if not 0 <= index < volume.shape[axis]:
        raise DataError(
            str(ref), f"slice {index} is out of range: the volume has {volume.shape[axis]}"
        )
    plane = volume[(slice(None),) * axis + (index,)]  # a view (np.take would copy the volume)
    return np.ascontiguousarray(np.rot90(plane))


class _Held:
    """The few volumes read last in one load (an LRU); a DataError counts as read too.

    Records come volume by volume, so a handful is enough to read each volume once, and a
    site's volumes together need not fit in memory. Lives as long as the load's records.
    """

    def __init__(self, size: int = _HELD_VOLUMES) -> None:
        self.size = size
        self.items: OrderedDict[Hashable, np.ndarray | DataError] = OrderedDict()

    def get(self, key: Hashable, load: Callable[[], np.ndarray]) -> np.ndarray:
        if key not in self.items:
            try:
                self.items[key] = load()
            except DataError as exc:
                self.items[key] = exc
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        self.items.move_to_end(key)
        item = self.items[key]
        if isinstance(item, DataError):
            raise DataError(item.source, item.problem)
        return item


@dataclass(frozen=True)
class SliceDecoder:
    """Decodes ``ImageRef(volume, axis name, slice index)``: the ``FileDecoder`` of ``nifti``.

    The settings are compared and shown (so they are part of the records' cache key); the
    volumes it holds are neither: they are the reading state of one load.
    """

    axis: int
    window: tuple[float, float] | None
    percentiles: tuple[float, float]
    held: _Held = field(default_factory=_Held, repr=False, compare=False)

    def ref(self, path: Path, index: int) -> ImageRef:
        return ImageRef(path, AXES[self.axis], index, decoder=self)

    def read_image(self, ref: ImageRef) -> np.ndarray:
        volume = self.held.get(
            ("image", ref.path), lambda: image_volume(ref.path, self.window, self.percentiles)
        )
        grey = _slice(volume, self.axis, _index(ref), ref)
        return np.repeat(grey[:, :, None], 3, axis=2)

    def read_mask(self, ref: ImageRef) -> np.ndarray:
        volume = self.held.get(("mask", ref.path), lambda: mask_volume(ref.path))
        return _slice(volume, self.axis, _index(ref), ref).astype(np.int64)


def _index(ref: ImageRef) -> int:
    assert ref.index is not None  # SliceDecoder.ref always sets it: not user input
    return ref.index


def _decoder(opts: VolumeOptions) -> SliceDecoder:
    return SliceDecoder(opts.slice_axis, opts.window, opts.percentiles)


def choose_slices(
    has_foreground: np.ndarray, shares: SliceShares, seed: int, key: str
) -> list[int]:
    """Slice indices: ``shares`` of those with and without foreground, drawn by seed and key.

    A share above 0 keeps at least one slice of its kind when the volume has one.
    """
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    chosen: list[int] = []
    for candidates, share in (
        (np.flatnonzero(has_foreground), shares.foreground),
        (np.flatnonzero(~has_foreground), shares.background),
    ):
        count = round(share * len(candidates))
        if share > 0 and len(candidates):
            count = max(1, count)
        chosen += rng.choice(candidates, size=count, replace=False).tolist() if count else []
    return sorted(int(i) for i in chosen)


def _volume_files(folder: Path) -> dict[str, Path]:
    """NIfTI files of a folder by stem; other files are counted in a warning."""
    volumes: dict[str, Path] = {}
    others = []
    for file in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        stem = volume_stem(file)
        if stem is None:
            others.append(file.name)
        else:
            volumes.setdefault(stem, file)
    if others:
        logger.warning(
            "%s: ignored %d non-NIfTI files (e.g. %s)", folder, len(others), ", ".join(others[:3])
        )
    return volumes


def _group(path: Path, root: Path) -> str:
    """A volume's group: its path below the data root, so the split survives a moved folder."""
    return "volume:" + os.path.relpath(path, root).replace(os.sep, "/")


# --- readers ---------------------------------------------------------------------------


def read_segmentation(task: TaskConfig, problems: Problems) -> list[Record]:
    """Image volumes and label volumes of the same shape, paired by case name."""
    opts = parse_volume_options(task, SegmentationOptions)
    _require_dir(task, task.path, "path")
    image_dir, mask_dir = task.path / opts.images, task.path / opts.masks
    _require_dir(task, image_dir, "options.images")
    _require_dir(task, mask_dir, "options.masks")
    images, masks = _volume_files(image_dir), _volume_files(mask_dir)
    decoder = _decoder(opts)
    records: list[Record] = []
    paired: set[str] = set()
    empty = 0
    for stem, image in images.items():
        if not stem.endswith(opts.image_suffix):
            problems.report(str(image), f"name does not end with '{opts.image_suffix}'")
            continue
        case = stem[: len(stem) - len(opts.image_suffix)]
        mask_stem = case + opts.mask_suffix
        if mask_stem not in masks:
            problems.report(str(image), f"no mask '{mask_stem}.nii[.gz]' in {mask_dir}")
            continue
        paired.add(mask_stem)
        try:
            found = _segmentation_slices(task, opts, decoder, image, masks[mask_stem])
        except DataError as exc:
            problems.report(exc.source, exc.problem)
            continue
        empty += not found
        records += found
    for stem in sorted(set(masks) - paired):
        problems.report(str(masks[stem]), f"mask has no image volume in {image_dir}")
    if empty:
        logger.warning("%s: %d volumes gave no slice (slices = %s)", image_dir, empty, opts.slices)
    if not records and not problems.skipped:
        raise DataError(str(image_dir), "no slices: no NIfTI volumes (.nii, .nii.gz) with masks")
    return records


def _segmentation_slices(
    task: TaskConfig,
    opts: SegmentationOptions,
    decoder: SliceDecoder,
    image: Path,
    mask: Path,
) -> list[Record]:
    image_img, mask_img = open_volume(image), open_volume(mask)
    shape, mask_shape = canonical_shape(image_img, image), canonical_shape(mask_img, mask)
    if mask_shape != shape:
        raise DataError(
            str(mask),
            f"mask shape {mask_shape} differs from the shape {shape} of its image {image} "
            "(both in RAS orientation); a mask needs one label per voxel of its image",
        )
    group = _group(image, task.path)
    axis = opts.slice_axis
    if opts.slices.needs_masks:
        labels = mask_volume(mask, mask_img)
        others = tuple(a for a in range(3) if a != axis)
        indices = choose_slices((labels != 0).any(axis=others), opts.slices, task.split.seed, group)
    else:
        indices = list(range(shape[axis]))
    return [
        Record(image=decoder.ref(image, i), targets={"mask": decoder.ref(mask, i)}, group=group)
        for i in indices
    ]


def read_classification(task: TaskConfig, problems: Problems) -> list[Record]:
    """A CSV with one row (a volume and its label) per volume; each slice has that label."""
    opts = parse_volume_options(task, ClassificationOptions)
    if opts.slices != SliceShares():
        raise task.error(
            "options.slices",
            'classification volumes have no masks to find foreground in: use "all"',
        )
    class_index = {name: i for i, name in enumerate(task.classes)}

    def parse(cell: str) -> dict[str, Any] | str:
        if not cell:
            return f"missing label (column '{opts.label_column}')"
        label = _csv_label(cell, class_index)
        return label if isinstance(label, str) else {"label": label}

    csv_opts = CsvOptions(opts.path_column, opts.label_column, opts.split_column, opts.images_root)
    rows = _read_csv(task, problems, csv_opts, (opts.label_column, "label_column"), parse)
    return _slices_of_rows(task, problems, opts, rows)


def read_unlabelled(task: TaskConfig, problems: Problems) -> list[Record]:
    """Every slice of the volumes of a CSV (``path`` a file) or a folder, without labels.

    A folder ``path`` reads the NIfTI files under ``path/<images>`` at any depth, or under
    ``path`` itself when ``images`` is left at its default and there is no such folder.
    """
    opts = parse_volume_options(task, UnlabelledOptions)
    if opts.slices != SliceShares():
        raise task.error(
            "options.slices", 'unlabelled volumes have no masks to find foreground in: use "all"'
        )
    if task.path.is_file():
        csv_opts = CsvOptions(
            opts.path_column, opts.path_column, opts.split_column, opts.images_root
        )
        # The path column stands in as the label column: every row's "label" is no label.
        rows = _read_csv(task, problems, csv_opts, (opts.path_column, "path_column"), lambda _: {})
        return _slices_of_rows(task, problems, opts, rows)
    _require_dir(task, task.path, "path")
    folder = task.path / opts.images
    if "images" not in task.options and not folder.is_dir():
        folder = task.path
    _require_dir(task, folder, "options.images")
    volumes = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and volume_stem(p) is not None
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    rows = [Record(image=ImageRef(p)) for p in volumes]
    records = _slices_of_rows(task, problems, opts, rows)
    if not records and not problems.skipped:
        raise DataError(str(folder), "no NIfTI volumes (.nii, .nii.gz) found", task=task.name)
    return records


def _slices_of_rows(
    task: TaskConfig,
    problems: Problems,
    opts: ClassificationOptions | UnlabelledOptions,
    rows: list[Record],
) -> list[Record]:
    """Every slice of each row's volume, with the row's split and targets."""
    root = task.path if task.path.is_dir() else _resolve(task, opts.images_root, task.path.parent)
    decoder = _decoder(opts)
    records: list[Record] = []
    for row in rows:
        path = row.image.path
        if volume_stem(path) is None:
            problems.report(str(path), "not a NIfTI file name (.nii, .nii.gz)")
            continue
        try:
            shape = canonical_shape(open_volume(path), path)
        except DataError as exc:
            problems.report(exc.source, exc.problem)
            continue
        group = _group(path, root)
        records += [
            Record(image=decoder.ref(path, i), split=row.split, targets=row.targets, group=group)
            for i in range(shape[opts.slice_axis])
        ]
    return records


register_reader("nifti", "segmentation", read_segmentation, SegmentationOptions)
register_reader("nifti", "classification", read_classification, ClassificationOptions)
register_reader("nifti", "self-supervised", read_unlabelled, UnlabelledOptions)
