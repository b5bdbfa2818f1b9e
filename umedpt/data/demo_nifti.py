"""A synthetic NIfTI site, written as research volumes are stored: ``.nii.gz`` with masks.

``clinic-nifti`` has two tasks, so both NIfTI readers and both intensity mappings run:

- ``ct-lesions`` (segmentation): CT-like int16 volumes in Hounsfield units (air -1000, a
  soft-tissue body around 40 HU, a lesion around 130 HU) with a label volume of the lesion,
  read through a soft-tissue window. Every second image is stored in LPS voxel order while
  its mask stays in RAS order, as happens when two tools write one case: only the reader's
  canonical reorientation puts the mask back on its lesion.
- ``mr-contrast`` (classification): MR-like float volumes whose contrast is the class
  (``t1-like``: the central fluid is darker than the tissue around it, ``t2-like``:
  brighter), each with its own arbitrary gain and offset, as MR intensities have no absolute
  scale; read with per-volume percentiles. Labels are in a CSV, one row per volume.

Learnable in a few steps, generated (no downloads) and the same bytes for the same seed
(nibabel writes gzip members without a timestamp).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

SITE = "clinic-nifti"
CONTRASTS = ("t1-like", "t2-like")  # classes of the MR task
_CT_SHAPE = (64, 64, 16)  # x, y, z voxels (RAS order)
_MR_SHAPE = (48, 48, 10)
_SPACING = (1.0, 1.0, 3.0)  # mm; thick slices, as in clinical CT


def write_nifti_site(
    out_dir: Path, *, seed: int = 0, image_size: int = 64, volumes: int = 10
) -> Path:
    """Write ``clinic-nifti`` (its volumes and site file) under ``out_dir``; return the file."""
    import nibabel as nib  # a demo of NIfTI data needs nibabel; the other demos do not

    if volumes < 4:
        raise ValueError(f"volumes must be at least 4, got {volumes}")
    out_dir = Path(out_dir)
    root = out_dir / SITE
    ct_rng, mr_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    for i in range(volumes):
        image, mask = _ct_case(ct_rng)
        case = f"case_{i:03d}"
        image_affine = _affine(_CT_SHAPE, lps=i % 2 == 1)
        stored = image[::-1, ::-1, :] if i % 2 == 1 else image  # LPS: x and y reversed
        _save(nib.Nifti1Image(stored, image_affine), root / "ct" / "images" / f"{case}.nii.gz")
        _save(nib.Nifti1Image(mask, _affine(_CT_SHAPE)), root / "ct" / "masks" / f"{case}.nii.gz")
    rows = ["path,label"]
    for i in range(volumes):
        label = i % 2
        name = f"subject_{i:03d}.nii.gz"
        _save(nib.Nifti1Image(_mr_volume(mr_rng, label), _affine(_MR_SHAPE)), root / "mr" / name)
        rows.append(f"{name},{CONTRASTS[label]}")
    (root / "mr" / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    tasks: list[dict[str, Any]] = [
        {
            "name": "ct-lesions",
            "type": "segmentation",
            "format": "nifti",
            "path": f"{SITE}/ct",
            "classes": ["lesion"],
            "image_size": image_size,
            "batch_size": 16,
            "options": {
                "slice_axis": "axial",
                "window": [40, 400],  # soft tissue, in HU
                "slices": {"foreground": 1.0, "background": 0.25},
            },
        },
        {
            "name": "mr-contrast",
            "type": "classification",
            "format": "nifti",
            "path": f"{SITE}/mr/labels.csv",
            "classes": list(CONTRASTS),
            "image_size": image_size,
            "batch_size": 16,
            "options": {"percentiles": [1.0, 99.0]},
        },
    ]
    document = {"name": SITE, "state_dir": f"state/{SITE}", "tasks": tasks}
    path = out_dir / f"{SITE}.toml"
    header = (
        "# Synthetic NIfTI demo site written by umedpt.data.demo_nifti (deterministic by seed).\n"
    )
    path.write_text(header + tomli_w.dumps(document), encoding="utf-8")
    return path


def _affine(shape: tuple[int, int, int], *, lps: bool = False) -> np.ndarray:
    """Voxel -> world (mm); ``lps``: x and y run backwards, the same world for reversed data."""
    affine = np.diag([*_SPACING, 1.0])
    if lps:
        affine[0, 0], affine[1, 1] = -_SPACING[0], -_SPACING[1]
        affine[0, 3], affine[1, 3] = (shape[0] - 1) * _SPACING[0], (shape[1] - 1) * _SPACING[1]
    return affine


def _save(img: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.to_filename(str(path))


def _ellipse(shape: tuple[int, int, int], rng: np.random.Generator, scale: float) -> np.ndarray:
    """An elliptic cylinder through every slice, centred with some jitter: the body."""
    x, y, _ = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    a, b = rng.uniform(0.32, 0.42, 2) * np.array(shape[:2]) * scale
    cx, cy = np.array(shape[:2]) / 2 + rng.uniform(-2, 2, 2)
    return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1


def _ct_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(int16 HU volume, uint8 lesion mask), both in RAS voxel order."""
    shape = _CT_SHAPE
    body = _ellipse(shape, rng, 1.0)
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 12, shape)
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    r_xy, r_z = rng.uniform(5, 9), rng.uniform(1.5, 3.5)
    cx, cy = rng.uniform(24, 40, 2)
    cz = rng.uniform(4, shape[2] - 5)
    lesion = ((x - cx) ** 2 + (y - cy) ** 2) / r_xy**2 + ((z - cz) / r_z) ** 2 <= 1
    hu[lesion] += rng.uniform(70, 110)
    return np.round(hu).astype(np.int16), lesion.astype(np.uint8)


def _mr_volume(rng: np.random.Generator, label: int) -> np.ndarray:
    """Float MR-like volume: tissue with central fluid, darker (t1-like) or brighter (t2-like)."""
    shape = _MR_SHAPE
    body = _ellipse(shape, rng, 1.0)
    fluid = _ellipse(shape, rng, 0.45)
    signal = np.where(body, 0.5, 0.02) + rng.normal(0, 0.05, shape)
    signal[fluid & body] = (0.15 if label == 0 else 0.95) + rng.normal(
        0, 0.05, int((fluid & body).sum())
    )
    gain, offset = rng.uniform(300, 3000), rng.uniform(0, 200)
    return (signal * gain + offset).astype(np.float32)
