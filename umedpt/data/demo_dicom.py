"""A small synthetic DICOM site, as a hospital's PACS export would hold it.

``clinic-dicom``: CT-like axial slices (HU through RescaleIntercept, a lung window in the
site file) of a few patients, each slice labelled ``nodule`` or ``clear`` in a CSV keyed by
``SOPInstanceUID``; every third file is RLE-compressed (pydicom encodes and decodes RLE
without plugins), and a ``README.txt`` sits among the files (skipped, counted). The files
carry realistic fake identifiers (patient name and ID, birth date, accession number, UIDs):
:data:`FAKE_IDENTIFIER_KEYWORDS` are what the identifier-scan test looks for. By default file
names carry none of them (``patient-01/slice-001.dcm``); ``pacs_names=True`` names them as
many exports do, folders by PatientID and files by SOPInstanceUID, so the tests can check
that paths stay on the site. Same seed, same bytes.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import tomli_w
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

SITE = "clinic-dicom"
CLASSES = ("clear", "nodule")
LUNG_WINDOW = (-600.0, 1500.0)  # center, width in HU
FAKE_IDENTIFIER_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)
_GIVEN = ("Maria", "Jonas", "Elif", "Pekka", "Ana", "Tomasz", "Ingrid", "Kwame", "Sofia", "Lars")
_FAMILY = ("Lindqvist", "Okafor", "Brandt", "Nieminen", "Sousa", "Kowalczyk", "Haugen", "Moreau")


def write_dicom_site(
    out_dir: Path,
    *,
    seed: int = 0,
    patients: int = 8,
    slices: int = 6,
    size: int = 64,
    pacs_names: bool = False,
) -> Path:
    """Write ``clinic-dicom`` (``patients`` x ``slices`` DICOM files) and return its site file.

    ``pacs_names``: ``<PatientID>/<SOPInstanceUID>.dcm`` instead of ``patient-01/slice-001.dcm``.
    """
    if patients < 3 or slices < 2:
        raise ValueError(f"need at least 3 patients of 2 slices, got {patients} x {slices}")
    out_dir = Path(out_dir)
    root = out_dir / SITE
    rng = np.random.default_rng(np.random.SeedSequence([seed, 21]))
    rows = []
    number = 0
    for p in range(patients):
        patient = _patient(rng, seed, p)
        for s in range(slices):
            label = int((p + s) % 2)  # both classes in every patient
            hu = _ct_slice(rng, size, nodule=bool(label))
            ds = _dataset(patient, seed, p, s, hu, compressed=number % 3 == 2)
            if pacs_names:
                path = root / "dicom" / ds.PatientID / f"{ds.SOPInstanceUID}.dcm"
            else:
                path = root / "dicom" / f"patient-{p + 1:02d}" / f"slice-{s + 1:03d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            rows.append((ds.SOPInstanceUID, CLASSES[label]))
            number += 1
    (root / "dicom" / "README.txt").write_text(
        "Exported by the demo PACS; not a DICOM file.\n", encoding="utf-8"
    )
    with (root / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("SOPInstanceUID", "label"))
        writer.writerows(rows)
    document = {
        "name": SITE,
        "state_dir": f"state/{SITE}",
        "tasks": [
            {
                "name": "ct-nodules",
                "type": "classification",
                "format": "dicom",
                "path": f"{SITE}/dicom",
                "classes": list(CLASSES),
                "image_size": size,
                "batch_size": 16,
                "split": {"val": 0.2, "test": 0.2},
                "options": {"labels": f"{SITE}/labels.csv", "window": list(LUNG_WINDOW)},
            }
        ],
    }
    site_file = out_dir / f"{SITE}.toml"
    header = (
        "# Synthetic DICOM demo site written by umedpt.data.demo_dicom (deterministic by seed).\n"
        "# Split by patient (PatientID, pseudonymised with a secret in state_dir); lung window.\n"
    )
    site_file.write_text(header + tomli_w.dumps(document), encoding="utf-8")
    return site_file


def _patient(rng: np.random.Generator, seed: int, p: int) -> dict[str, str]:
    given, family = _GIVEN[rng.integers(len(_GIVEN))], _FAMILY[rng.integers(len(_FAMILY))]
    year, month, day = (
        1940 + int(rng.integers(60)),
        1 + int(rng.integers(12)),
        1 + int(rng.integers(28)),
    )
    return {
        "PatientName": f"{family}^{given}",
        "PatientID": f"HSP{int(rng.integers(10**6, 10**7))}",
        "PatientBirthDate": f"{year:04d}{month:02d}{day:02d}",
        "AccessionNumber": f"ACC{int(rng.integers(10**7, 10**8))}",
        "StudyInstanceUID": _uid(seed, "study", p),
        "SeriesInstanceUID": _uid(seed, "series", p),
    }


def _uid(seed: int, kind: str, *numbers: int) -> str:
    return generate_uid(
        prefix=None, entropy_srcs=[f"umedpt-demo:{seed}:{kind}", *map(str, numbers)]
    )


def _ct_slice(rng: np.random.Generator, size: int, *, nodule: bool) -> np.ndarray:
    """HU: air outside, soft tissue body, two dark lungs, maybe a soft-tissue nodule in one."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    body = ((xx - 0.5) / 0.44) ** 2 + ((yy - 0.5) / 0.34) ** 2 <= 1
    hu[body] = 40.0
    for cx in (0.32, 0.68):
        lung = ((xx - cx) / 0.14) ** 2 + ((yy - 0.5) / 0.22) ** 2 <= 1
        hu[lung] = -850.0
    if nodule:
        cx = (0.32 if rng.random() < 0.5 else 0.68) + rng.uniform(-0.05, 0.05)
        cy = 0.5 + rng.uniform(-0.12, 0.12)
        r = rng.uniform(0.04, 0.07)
        hu[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = 30.0
    hu += rng.normal(0, 25, hu.shape).astype(np.float32)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16)


def _dataset(
    patient: dict[str, str], seed: int, p: int, s: int, hu: np.ndarray, *, compressed: bool
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = _uid(seed, "sop", p, s)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    for keyword, value in patient.items():
        setattr(ds, keyword, value)
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = "20240115"
    ds.Modality = "CT"
    ds.Manufacturer = "Demo Scanner Co"
    ds.InstanceNumber = s + 1
    ds.SliceLocation = float(s) * 2.5
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.WindowCenter, ds.WindowWidth = 40, 400  # the scanner's soft-tissue window
    ds.PixelData = (hu.astype(np.int32) + 1024).astype(np.uint16).tobytes()
    if compressed:
        ds.compress(RLELossless, encoding_plugin="pydicom")
    return ds
