"""A small synthetic federation, written in the on-disk formats real sites have.

It lets anyone run the whole federated pipeline in seconds without downloads, and it is
learnable (shapes, blobs and spots a model separates far above chance), so a demo run
shows losses going down. Files depend only on the seed: same seed, same bytes (PNGs carry
no timestamps; the npz archive is written with a fixed zip date).

Sites:

- ``clinic-a``: classification, ``class-folders`` of grey PNGs: a lesion whose texture
  (homogeneous, speckled, striped) is the class.
- ``clinic-b``: segmentation, ``mask-folder``: grey ellipses with filled 0/1 masks.
- ``clinic-c``: detection, Pascal ``voc``: bright squares and discs (some images empty).
- ``clinic-d``: classification, MedMNIST-style ``npz``: horizontal vs vertical stripes.
- ``clinic-e``: self-supervised, a ``folder`` of unlabelled grey PNGs in sub-folders (any
  depth): organ-like ellipses with textured lesions. A quarter of the others' size (at
  least 12), so the demo simulation stays fast.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
from PIL import Image

TEXTURES = ("homogeneous", "speckled", "striped")  # lesion echotexture classes of clinic-a
SPOTS = ("square-spot", "round-spot")  # object classes of the detection site
STRIPES = ("horizontal", "vertical")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def write_demo_federation(
    out_dir: Path,
    *,
    seed: int = 0,
    image_size: int = 64,
    images_per_site: int = 240,
    unlabelled: bool = True,
) -> list[Path]:
    """Write the demo sites under ``out_dir`` and return their site TOML files.

    Four labelled sites, plus the unlabelled ``clinic-e`` (last) unless ``unlabelled`` is
    False (benchmarks that count labelled sites).
    """
    if image_size < 32 or image_size % 32:
        raise ValueError(f"image_size must be a positive multiple of 32, got {image_size}")
    if images_per_site < 12:
        raise ValueError(f"images_per_site must be at least 12, got {images_per_site}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Child i depends only on (seed, i): adding a site leaves the others' bytes unchanged.
    seeds = np.random.SeedSequence(seed).spawn(5)
    rngs = [np.random.default_rng(s) for s in seeds]
    n, size = images_per_site, image_size
    sites = [
        _clinic_a(out_dir, rngs[0], n, size),
        _clinic_b(out_dir, rngs[1], n, size),
        _clinic_c(out_dir, rngs[2], n, size),
        _clinic_d(out_dir, rngs[3], n, size),
    ]
    if unlabelled:
        sites.append(_clinic_e(out_dir, rngs[4], max(12, n // 4), size))
    return sites


# --- drawing ---------------------------------------------------------------------------


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:size, 0:size].astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Noisy, slightly shaded background, like an ultrasound or microscope field."""
    yy, xx = _grid(size)
    shade = rng.uniform(-15, 15) * (xx / size) + rng.uniform(-15, 15) * (yy / size)
    return rng.uniform(40, 80) + shade + rng.normal(0, 12, (size, size))


def _shape_mask(kind: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    yy, xx = _grid(size)
    if kind in ("disc", "round-spot"):
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    if kind in ("square", "square-spot"):
        return (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    arm = max(1.5, r / 3)  # cross
    return ((np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= arm)) | (
        (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= arm)
    )


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")


def _write_toml(out_dir: Path, site: str, task: dict[str, Any]) -> Path:
    """Write a site file with one task (the site file format of ``umedpt.config``)."""
    document = {"name": site, "state_dir": f"state/{site}", "tasks": [{**task, "batch_size": 16}]}
    path = out_dir / f"{site}.toml"
    header = "# Synthetic demo site written by umedpt.data.demo (deterministic by seed).\n"
    path.write_text(header + tomli_w.dumps(document), encoding="utf-8")
    return path


# --- sites -----------------------------------------------------------------------------


def _lesion_texture(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Brightness added inside a lesion: flat, speckled (coarse dots) or striped.

    Texture, not outline, tells the classes apart: a cue that a small encoder learns in a
    few dozen steps, like the echotexture that separates lesions in ultrasound.
    """
    yy, xx = _grid(size)
    if kind == "homogeneous":
        return np.full((size, size), rng.uniform(70, 110))
    if kind == "speckled":
        cells = rng.random((size // 4 + 1, size // 4 + 1)) < 0.5
        dots = np.kron(cells, np.ones((4, 4)))[:size, :size]
        return dots * rng.uniform(110, 150)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(5, 8)
    phase = np.cos(angle) * xx + np.sin(angle) * yy
    return (np.sin(2 * np.pi * phase / period) > 0) * rng.uniform(110, 150)


def _clinic_a(out_dir: Path, rng: np.random.Generator, n: int, size: int) -> Path:
    root = out_dir / "clinic-a" / "lesions"
    for i in range(n):
        kind = TEXTURES[i % len(TEXTURES)]
        r = rng.uniform(0.2, 0.32) * size
        cx, cy = rng.uniform(r + 1, size - r - 1, 2)
        img = _background(rng, size)
        inside = _shape_mask("disc", cx, cy, r, size)
        img[inside] += _lesion_texture(kind, rng, size)[inside]
        _save_png(root / kind / f"{kind}_{i:04d}.png", _to_u8(img))
    return _write_toml(
        out_dir,
        "clinic-a",
        {
            "name": "lesions",
            "type": "classification",
            "format": "class-folders",
            "path": "clinic-a/lesions",
            "classes": list(TEXTURES),
            "image_size": size,
        },
    )


def _clinic_b(out_dir: Path, rng: np.random.Generator, n: int, size: int) -> Path:
    root = out_dir / "clinic-b" / "ultrasound"
    yy, xx = _grid(size)
    for i in range(n):
        a, b = rng.uniform(0.12, 0.3, 2) * size
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        angle = rng.uniform(0, np.pi)
        c, s = np.cos(angle), np.sin(angle)
        u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1
        img = _background(rng, size)
        img[inside] += rng.uniform(50, 110)
        _save_png(root / "images" / f"case{i:04d}.png", _to_u8(img))
        _save_png(root / "masks" / f"case{i:04d}.png", inside.astype(np.uint8))
    return _write_toml(
        out_dir,
        "clinic-b",
        {
            "name": "blobs",
            "type": "segmentation",
            "format": "mask-folder",
            "path": "clinic-b/ultrasound",
            "classes": ["blob"],
            "image_size": size,
        },
    )


def _clinic_c(out_dir: Path, rng: np.random.Generator, n: int, size: int) -> Path:
    root = out_dir / "clinic-c" / "VOC"
    ids = []
    for i in range(n):
        img = _background(rng, size)
        objects = []
        n_objects = 0 if i % 6 == 0 else int(rng.integers(1, 4))
        for _ in range(n_objects):
            kind = SPOTS[int(rng.integers(0, 2))]
            r = rng.uniform(0.06, 0.12) * size
            cx, cy = rng.uniform(r + 1, size - r - 1, 2)
            img[_shape_mask(kind, cx, cy, r, size)] = rng.uniform(170, 230)
            box = [
                int(np.floor(cx - r)),
                int(np.floor(cy - r)),
                int(np.ceil(cx + r)),
                int(np.ceil(cy + r)),
            ]
            objects.append((kind, box))
        stem = f"img{i:04d}"
        ids.append(stem)
        img = img + rng.normal(0, 6, img.shape)
        _save_png(root / "JPEGImages" / f"{stem}.png", _to_u8(img))
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text(_voc_xml(stem, size, objects), "utf-8")
    sets = root / "ImageSets" / "Main"
    sets.mkdir(parents=True, exist_ok=True)
    n_test = n_val = max(1, n // 7)
    chunks = {
        "test": ids[:n_test],
        "val": ids[n_test : n_test + n_val],
        "train": ids[n_test + n_val :],
    }
    for split, members in chunks.items():
        (sets / f"{split}.txt").write_text("".join(f"{m}\n" for m in members), "utf-8")
    return _write_toml(
        out_dir,
        "clinic-c",
        {
            "name": "spots",
            "type": "detection",
            "format": "voc",
            "path": "clinic-c/VOC",
            "classes": list(SPOTS),
            "image_size": size,
        },
    )


def _voc_xml(stem: str, size: int, objects: list[tuple[str, list[int]]]) -> str:
    parts = [
        "<annotation>",
        f"  <filename>{stem}.png</filename>",
        f"  <size><width>{size}</width><height>{size}</height><depth>1</depth></size>",
    ]
    for kind, (x0, y0, x1, y1) in objects:
        parts += [
            "  <object>",
            f"    <name>{kind}</name>",
            f"    <bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>",
            "  </object>",
        ]
    return "\n".join([*parts, "</annotation>", ""])


def _clinic_d(out_dir: Path, rng: np.random.Generator, n: int, size: int) -> Path:
    side = 28  # MedMNIST's native size; the loader resizes to image_size
    yy, xx = _grid(side)
    images, labels = [], []
    for i in range(n):
        label = i % 2
        period = rng.uniform(4, 8)
        phase = rng.uniform(0, 2 * np.pi)
        coord = yy if label == 0 else xx
        img = (
            110 + 45 * np.sin(2 * np.pi * coord / period + phase) + rng.normal(0, 20, (side, side))
        )
        images.append(_to_u8(img))
        labels.append(label)
    images_arr, labels_arr = np.stack(images), np.asarray(labels, dtype=np.uint8)
    n_test = n_val = max(1, n // 7)
    parts = {
        "test": slice(0, n_test),
        "val": slice(n_test, n_test + n_val),
        "train": slice(n_test + n_val, n),
    }
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = images_arr[parts[split]]
        arrays[f"{split}_labels"] = labels_arr[parts[split]]
    path = out_dir / "clinic-d" / "stripes.npz"
    _save_npz(path, arrays)
    return _write_toml(
        out_dir,
        "clinic-d",
        {
            "name": "stripes",
            "type": "classification",
            "format": "npz",
            "path": "clinic-d/stripes.npz",
            "classes": list(STRIPES),
            "image_size": size,
        },
    )


def _clinic_e(out_dir: Path, rng: np.random.Generator, n: int, size: int) -> Path:
    """Unlabelled scans in two sub-folders: an organ (ellipse) with a textured lesion inside."""
    root = out_dir / "clinic-e" / "scans"
    yy, xx = _grid(size)
    for i in range(n):
        a, b = rng.uniform(0.25, 0.42, 2) * size
        cx, cy = rng.uniform(0.4, 0.6, 2) * size
        organ = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1
        img = _background(rng, size)
        img[organ] += rng.uniform(30, 60)
        r = rng.uniform(0.08, 0.14) * size
        lesion = _shape_mask("disc", cx + rng.uniform(-0.4, 0.4) * a, cy, r, size) & organ
        texture = _lesion_texture(TEXTURES[int(rng.integers(0, len(TEXTURES)))], rng, size)
        img[lesion] += texture[lesion]
        _save_png(root / f"day-{i % 2 + 1}" / f"scan{i:04d}.png", _to_u8(img))
    return _write_toml(
        out_dir,
        "clinic-e",
        {
            "name": "scans",
            "type": "self-supervised",
            "format": "folder",
            "path": "clinic-e/scans",
            "image_size": size,
        },
    )


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez`` but byte-reproducible (np.savez stamps members with the current time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, buffer.getvalue())
