"""Reading one image or mask into a numpy array, and resizing it to the task's square size.

Images come out as uint8 RGB ``(H, W, 3)`` whatever the file held (grey, palette, RGBA,
16-bit), because the shared encoder sees every site's images and must get one layout.
Masks come out as integer class maps ``(H, W)`` and are never colour-converted: their
values are class indices, not intensities.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from types import TracebackType

import numpy as np
from PIL import Image, UnidentifiedImageError

from umedpt.data.samples import ImageRef
from umedpt.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")

_PIL_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
)


class ImageSource:
    """Reads ImageRefs; keeps each opened ``.npz`` array for the lifetime of this object only.

    Use one per load (``with ImageSource() as source: ...``) so that an npz file is read once
    per load, not once per sample, and no array outlives the load.
    """

    def __init__(self) -> None:
        self._arrays: dict[tuple[Path, str], np.ndarray] = {}

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._arrays.clear()

    def read_image(self, ref: ImageRef) -> np.ndarray:
        """Read an image as uint8 RGB ``(H, W, 3)``."""
        if ref.decoder is not None:
            return ref.decoder.read_image(ref)
        if ref.member is None:
            return _pil_to_rgb(_open_pil(ref.path), str(ref))
        return array_to_rgb(self._npz_item(ref), str(ref))

    def read_mask(self, ref: ImageRef) -> np.ndarray:
        """Read a mask as an int64 class map ``(H, W)`` (values untouched)."""
        if ref.decoder is not None:
            return ref.decoder.read_mask(ref)
        if ref.member is None:
            return _pil_to_classes(_open_pil(ref.path), str(ref))
        arr = self._npz_item(ref)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise DataError(
                str(ref), f"a mask must be a 2-D integer array, got {arr.dtype} {arr.shape}"
            )
        return arr.astype(np.int64)

    def _npz_item(self, ref: ImageRef) -> np.ndarray:
        assert (
            ref.member is not None and ref.index is not None
        )  # ImageRef invariant, not user input
        key = (ref.path, ref.member)
        if key not in self._arrays:
            self._arrays[key] = _load_npz_member(ref.path, ref.member)
        arr = self._arrays[key]
        if not 0 <= ref.index < len(arr):
            raise DataError(str(ref), f"index out of range: '{ref.member}' has {len(arr)} items")
        return arr[ref.index]


def _load_npz_member(path: Path, member: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if member not in npz.files:
                raise DataError(
                    str(path), f"no array '{member}' (arrays: {', '.join(npz.files) or 'none'})"
                )
            return npz[member]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(str(path), f"cannot read npz archive: {exc}") from exc


def _open_pil(path: Path) -> Image.Image:
    """Open and fully decode an image file, so truncated files fail here, naming the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()  # the context manager frees the decoded data on exit
    except FileNotFoundError as exc:
        raise DataError(str(path), "image file not found") from exc
    except _PIL_ERRORS as exc:
        raise DataError(str(path), f"cannot read image ({type(exc).__name__}: {exc})") from exc


def _pil_to_rgb(img: Image.Image, source: str) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return array_to_rgb(np.asarray(img), source)
    if img.mode in ("1", "L", "LA"):
        grey = np.asarray(img.convert("L"))
        return np.repeat(grey[:, :, None], 3, axis=2)
    # RGB, RGBA (alpha dropped: medical images carry no meaningful transparency), P, CMYK, ...
    try:
        return np.asarray(img.convert("RGB"))
    except ValueError as exc:
        raise DataError(source, f"cannot convert image mode {img.mode} to RGB: {exc}") from exc


def array_to_rgb(arr: np.ndarray, source: str) -> np.ndarray:
    """Turn an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array into uint8 RGB.

    Non-uint8 data (16-bit PNGs, float arrays) are min-max scaled per image to 0..255:
    such images rarely use the full range of their type (a 12-bit detector fills 0..4095 of
    0..65535), so a fixed ``/257`` would leave them almost black. A constant image maps to 0.
    """
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[:, :, :3] if arr.shape[2] != 1 else arr[:, :, 0]
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise DataError(source, f"expected an (H, W) or (H, W, C) image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = _min_max_uint8(arr, source)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def _min_max_uint8(arr: np.ndarray, source: str) -> np.ndarray:
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(source, f"unsupported pixel type {arr.dtype}")
    values = arr.astype(np.float64)
    if not np.isfinite(values).all():
        raise DataError(source, "image contains NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _pil_to_classes(img: Image.Image, source: str) -> np.ndarray:
    if img.mode in ("RGB", "RGBA"):
        rgb = np.asarray(img)[:, :, :3]
        if not ((rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 1] == rgb[:, :, 2]).all()):
            raise DataError(
                source,
                "mask is a colour image; save masks as single-channel PNGs of class indices "
                "(0 = background, 1..C = classes)",
            )
        return rgb[:, :, 0].astype(np.int64)
    if img.mode in ("1", "L", "P", "I;16", "I;16B", "I;16L", "I;16N", "I", "LA"):
        arr = np.asarray(img if img.mode != "LA" else img.getchannel(0))
        return arr.astype(np.int64)
    raise DataError(source, f"unsupported mask mode {img.mode}; use an 8-bit single-channel PNG")


def resize_image(rgb: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a uint8 ``(H, W, 3)`` image to ``(size, size, 3)`` (PIL antialiases)."""
    if rgb.shape[:2] == (size, size):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a class map (values must fit uint8) to ``(size, size)``."""
    small = mask.astype(np.uint8)
    if small.shape == (size, size):
        return small
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.NEAREST))
