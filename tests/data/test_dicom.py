"""The DICOM reader: pixels (rescale, windows, MONOCHROME1, colour, frames, codecs), labels,
splits by pseudonymous patient key, and bad input named by file and field.

Uses pydicom's bundled test files (no download) and small files written here."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pydicom
import pydicom.pixels
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from umedpt.config import SplitConfig, TaskConfig, load_site_config
from umedpt.data import dicom
from umedpt.data.cache import site_cache_dir
from umedpt.data.demo_dicom import write_dicom_site
from umedpt.data.loading import load_task, load_task_data
from umedpt.data.pseudonyms import KEY_FILE
from umedpt.data.readers import read_records
from umedpt.errors import ConfigError, DataError


def bundled(name: str) -> Path:
    return Path(get_testdata_file(name))  # bundled with pydicom: never downloaded


def write_dicom(path: Path, pixels: np.ndarray, **attrs: Any) -> Path:
    """A minimal uncompressed single- or multi-frame grey DICOM file."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        SecondaryCaptureImageStorage,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.PatientID = attrs.pop("PatientID", "P-1")
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def dicom_task(
    tmp_path: Path,
    path: Path,
    *,
    type: str = "classification",
    classes: tuple[str, ...] = ("a", "b"),
    options: dict[str, Any] | None = None,
    skip_bad_samples: bool = False,
) -> TaskConfig:
    return TaskConfig(
        name="t",
        type=type,
        format="dicom",
        path=path,
        classes=classes,
        image_size=32,
        skip_bad_samples=skip_bad_samples,
        split=SplitConfig(val=0.25, test=0.25),
        options=MappingProxyType(dict(options or {})),
        source=tmp_path / "site.toml",
        state_dir=tmp_path / "state",
    )


def manifest(tmp_path: Path, rows: list[tuple[str, ...]], header: str = "path,label") -> Path:
    file = tmp_path / "manifest.csv"
    file.write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    return file


# --- pixels -----------------------------------------------------------------------------


def test_the_files_own_window_is_applied_after_the_rescale() -> None:
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    rgb = dicom.decode_dicom(bundled("MR_small.dcm"))
    values = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(float)
    expected = np.round(np.clip((values - (600 - 800)) / 1600, 0, 1) * 255)  # WC 600, WW 1600
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[:, :, 0], expected)
    assert (rgb[:, :, 0] == rgb[:, :, 2]).all()


def test_a_site_window_overrides_the_file_and_works_in_rescaled_units(tmp_path) -> None:
    stored = np.array([[0, 1000], [1500, 4000]])
    file = write_dicom(tmp_path / "ct.dcm", stored, RescaleSlope=1, RescaleIntercept=-1000,
                       WindowCenter=40, WindowWidth=400)  # fmt: skip
    # HU -1000, 0, 500, 3000 through [0, 1000] (center 500): 0, 0, 0.5 -> 128, 1 -> 255
    rgb = dicom.decode_dicom(file, window=(500.0, 1000.0))
    np.testing.assert_array_equal(rgb[:, :, 0], [[0, 0], [128, 255]])
    # ... through [-500, 500] (center 0): 0, 0.5 -> 128, 1, 1; the file's 40/400 is ignored
    rgb = dicom.decode_dicom(file, window=(0.0, 1000.0))
    np.testing.assert_array_equal(rgb[:, :, 0], [[0, 128], [255, 255]])


def test_no_window_scales_the_image_min_to_max() -> None:
    rgb = dicom.decode_dicom(bundled("CT_small.dcm"))  # CT_small has no window
    assert rgb.min() == 0 and rgb.max() == 255


def test_monochrome1_is_inverted(tmp_path) -> None:
    file = tmp_path / "m1.dcm"
    shutil.copy(bundled("MR_small.dcm"), file)
    ds = pydicom.dcmread(file)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(file)
    normal = dicom.decode_dicom(bundled("MR_small.dcm")).astype(int)
    np.testing.assert_array_equal(dicom.decode_dicom(file), 255 - normal)


def test_rle_and_jpeg2000_decode_and_rle_matches_the_uncompressed_file() -> None:
    np.testing.assert_array_equal(
        dicom.decode_dicom(bundled("MR_small_RLE.dcm")), dicom.decode_dicom(bundled("MR_small.dcm"))
    )
    j2k = dicom.decode_dicom(bundled("JPEG2000.dcm"))
    assert j2k.shape == (1024, 256, 3) and j2k.std() > 0


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "SC_ybr_full_422_uncompressed.dcm"])
def test_ybr_files_come_out_as_rgb(name) -> None:
    rgb = dicom.decode_dicom(bundled(name))
    assert rgb.shape == (100, 100, 3)
    # pydicom's SC_rgb test images: a red band on top, a green one below it
    top = rgb[:5].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[1] < 60 and top[2] < 60, top


def test_one_sample_per_frame_or_the_chosen_frame(tmp_path) -> None:
    frames = np.zeros((3, 8, 8))
    frames[:, 0, 0] = 300  # every frame spans 0..300, so min..max scaling keeps 100 at 85
    frames[:, 1, 1] = (0, 100, 200)
    file = write_dicom(tmp_path / "cine" / "multi.dcm", frames)
    (tmp_path / "labels.csv").write_text("path,label\nmulti.dcm,a\n")
    options = {"labels": "labels.csv"}
    records = read_records(dicom_task(tmp_path, file.parent, options=options))
    assert [r.image.index for r in records] == [0, 1, 2]
    assert len({r.group for r in records}) == 1  # all frames of one patient
    task = dicom_task(tmp_path, file.parent, options={**options, "frame": 1})
    (record,) = read_records(task)
    assert record.image.index == 1
    image = record.image.decoder.read_image(record.image)
    assert image[1, 1, 0] == round(100 / 300 * 255)
    with pytest.raises(DataError, match="NumberOfFrames.*frame = 5 but the file has 3"):
        read_records(dicom_task(tmp_path, file.parent, options={**options, "frame": 5}))


# --- bad input --------------------------------------------------------------------------


def test_window_width_zero_in_the_site_file_names_the_field(tmp_path) -> None:
    task = dicom_task(tmp_path, tmp_path, options={"window": [40, 0]})
    with pytest.raises(ConfigError, match="width must be positive") as info:
        read_records(task)
    assert info.value.field == "tasks[0].options.window"


def test_window_width_zero_in_a_file_names_the_file_and_the_attribute(tmp_path) -> None:
    file = write_dicom(tmp_path / "x.dcm", np.arange(16).reshape(4, 4),
                       WindowCenter=40, WindowWidth=0)  # fmt: skip
    with pytest.raises(DataError, match="WindowWidth is 0.*options.window") as info:
        dicom.decode_dicom(file)
    assert info.value.source == str(file)


def test_non_dicom_files_in_a_folder_are_skipped_and_counted(tmp_path, caplog) -> None:
    root = tmp_path / "scans"
    for i in range(4):
        write_dicom(root / f"s{i}.dcm", np.full((4, 4), i * 10), PatientID=f"P{i}")
    (root / "fake.dcm").write_text("not dicom at all")
    (tmp_path / "labels.csv").write_text(
        "path,label\n" + "".join(f"s{i}.dcm,{'ab'[i % 2]}\n" for i in range(4))
    )
    with caplog.at_level("WARNING"):
        records = read_records(dicom_task(tmp_path, root, options={"labels": "labels.csv"}))
    assert len(records) == 4
    assert "skipped 1 files" in caplog.text and "fake.dcm" in caplog.text


def test_a_non_dicom_file_in_a_manifest_is_an_error_or_skipped(tmp_path) -> None:
    write_dicom(tmp_path / "ok.dcm", np.zeros((4, 4)))
    (tmp_path / "fake.dcm").write_bytes(b"\x00" * 300)
    file = manifest(tmp_path, [("ok.dcm", "a"), ("fake.dcm", "b")])
    with pytest.raises(DataError, match="not a DICOM file") as info:
        read_records(dicom_task(tmp_path, file))
    assert "row 3" in info.value.source and "fake.dcm" in info.value.source
    task = dicom_task(tmp_path, file, skip_bad_samples=True)
    with pytest.warns(UserWarning, match="skipped 1 bad samples"):
        data = load_task_data(task)
    assert sum(map(len, data.splits.values())) == 1


def test_a_missing_label_names_the_file(tmp_path) -> None:
    root = tmp_path / "scans"
    write_dicom(root / "s0.dcm", np.zeros((4, 4)))
    write_dicom(root / "s1.dcm", np.zeros((4, 4)))
    (tmp_path / "labels.csv").write_text("path,label\ns0.dcm,a\n")
    with pytest.raises(DataError, match="missing label") as info:
        read_records(dicom_task(tmp_path, root, options={"labels": "labels.csv"}))
    assert info.value.source == str(root / "s1.dcm")
    file = manifest(tmp_path, [("scans/s0.dcm", "a"), ("scans/s1.dcm", "")])
    with pytest.raises(DataError, match="missing label: empty 'label'") as info:
        read_records(dicom_task(tmp_path, file))
    assert info.value.source.endswith("row 3")


def test_an_undecodable_compressed_file_names_its_transfer_syntax(tmp_path) -> None:
    file = manifest(tmp_path, [(str(bundled("JPEG-lossy.dcm")), "a")])
    with pytest.raises(DataError, match="JPEG Extended") as info:
        load_task_data(dicom_task(tmp_path, file))
    assert "TransferSyntaxUID" in str(info.value) and "umedpt-fl[dicom]" in str(info.value)


def test_a_compressed_file_without_plugins_says_which_extra_to_install(monkeypatch) -> None:
    class NoPlugins:
        is_available = False

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda syntax: NoPlugins())
    with pytest.raises(DataError, match="which no installed plugin decodes") as info:
        dicom.decode_dicom(bundled("JPEG2000.dcm"))
    assert "JPEG 2000" in str(info.value) and "pip install 'umedpt-fl[dicom]'" in str(info.value)


# --- labels, masks, splits, cache --------------------------------------------------------


def test_segmentation_manifest_with_png_masks(tmp_path) -> None:
    from PIL import Image

    rows = []
    for i in range(4):
        write_dicom(tmp_path / f"s{i}.dcm", np.full((16, 16), 50 * i), PatientID=f"P{i}")
        mask = np.zeros((16, 16), np.uint8)
        mask[4:8, 4:8] = 1
        Image.fromarray(mask).save(tmp_path / f"s{i}.png")
        rows.append((f"s{i}.dcm", f"s{i}.png"))
    file = manifest(tmp_path, rows, header="path,mask")
    data = load_task_data(dicom_task(tmp_path, file, type="segmentation", classes=("lesion",)))
    sample = next(s for v in data.splits.values() for s in v)
    assert int(sample.targets["mask"].sum()) == 64  # the 4x4 square, resized 16 -> 32 px
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "s0.png")
    with pytest.raises(DataError, match="mask is 8x8"):
        load_task_data(dicom_task(tmp_path, file, type="segmentation", classes=("lesion",)))


@pytest.mark.parametrize("suffix, slice_shape", [(".nii.gz", ()), (".nii", (1,))])
def test_segmentation_manifest_with_2d_nifti_masks(tmp_path, suffix, slice_shape) -> None:
    import nibabel as nib

    from umedpt.data.images import ImageSource

    rows, expected = [], {}
    for i in range(4):
        write_dicom(tmp_path / f"s{i}.dcm", np.full((16, 12), 50 * i), PatientID=f"P{i}")
        mask = np.zeros((16, 12), np.uint8)  # rows x columns, not square: a transpose shows
        mask[2 + i : 6 + i, 1:4] = 1
        # NIfTI's first axis runs along the columns (as ITK writes a DICOM slice's mask)
        voxels = mask.T.reshape(12, 16, *slice_shape)
        nib.save(nib.Nifti1Image(voxels, np.eye(4)), tmp_path / f"s{i}{suffix}")
        rows.append((f"s{i}.dcm", f"s{i}{suffix}"))
        expected[tmp_path / f"s{i}.dcm"] = mask
    task = dicom_task(tmp_path, manifest(tmp_path, rows, header="path,mask"),
                      type="segmentation", classes=("lesion",))  # fmt: skip
    with ImageSource() as source:
        for record in read_records(task):
            read = source.read_mask(record.targets["mask"])
            np.testing.assert_array_equal(read, expected[record.image.path])
    data = load_task_data(task)
    assert all(int(s.targets["mask"].sum()) > 0 for v in data.splits.values() for s in v)
    voxels = np.zeros((12, 16, 3), np.uint8)  # three slices: which one belongs to the image?
    nib.save(nib.Nifti1Image(voxels, np.eye(4)), tmp_path / f"s0{suffix}")
    with pytest.raises(DataError, match="2-D or a single slice, got shape") as info:
        load_task_data(task)
    assert info.value.source.endswith(f"s0{suffix}")


def test_splits_keep_a_patient_together_under_a_keyed_pseudonym(tmp_path) -> None:
    site = load_site_config(write_dicom_site(tmp_path, patients=6, slices=4))
    task = site.tasks[0]
    records = read_records(task)
    patient_ids = {
        str(pydicom.dcmread(r.image.path, stop_before_pixels=True).PatientID): r.group
        for r in records
    }
    assert len(patient_ids) == 6 and len(set(patient_ids.values())) == 6
    for patient_id, group in patient_ids.items():
        assert patient_id not in group and group.startswith("patient:")
    key_file = task.state_dir / KEY_FILE
    assert key_file.stat().st_mode & 0o077 == 0  # the secret is the site account's only
    assert [r.group for r in read_records(task)] == [r.group for r in records]  # stable
    data = load_task_data(task)
    split_of = {s.source: split for split, samples in data.splits.items() for s in samples}
    per_patient: dict[str, set[str]] = {}
    for r in records:
        per_patient.setdefault(r.group, set()).add(split_of[str(r.image)])
    assert all(len(splits) == 1 for splits in per_patient.values())
    assert len({s for v in per_patient.values() for s in v}) == 3  # train, val and test used
    key_file.write_bytes(b"\x01" * 32)  # another site's secret: other pseudonyms
    assert read_records(task)[0].group != records[0].group


def test_second_load_reads_the_cache_and_its_file_name_holds_no_identifier(tmp_path) -> None:
    site = load_site_config(write_dicom_site(tmp_path, patients=3, slices=2))
    task = site.tasks[0]
    first = load_task(task, cache_dir=site_cache_dir(site))
    again = load_task(task, cache_dir=site_cache_dir(site))
    assert not first.from_cache and again.from_cache
    assert first.cache_file == again.cache_file
    for r in read_records(task):
        ds = pydicom.dcmread(r.image.path, stop_before_pixels=True)
        for keyword in dicom.IDENTIFIER_KEYWORDS:
            assert str(ds.get(keyword)) not in first.cache_file.name
    a = [s.image for s in first.data["train"]]
    b = [s.image for s in again.data["train"]]
    assert all((x == y).all() for x, y in zip(a, b, strict=True))


def test_header_summary_counts_values_and_identifiers_not_their_values(tmp_path) -> None:
    site = load_site_config(write_dicom_site(tmp_path, patients=3, slices=3))
    summary = dicom.header_summary(site.tasks[0])
    assert summary["files"] == 9 and summary["Modality"] == {"CT": 9}
    assert summary["TransferSyntax"] == {"Explicit VR Little Endian": 6, "RLE Lossless": 3}
    assert summary["identifiers_seen"]["PatientID"] == 9
    assert summary["paths_naming_identifiers"] == 0
    text = repr(summary)
    ds = pydicom.dcmread(next((tmp_path / "clinic-dicom").rglob("*.dcm")))
    assert ds.PatientID not in text and str(ds.PatientName) not in text


def test_a_folder_without_labels_feeds_a_self_supervised_task(tmp_path) -> None:
    from umedpt.tasks import TASK_TYPES

    if "self-supervised" not in TASK_TYPES:
        pytest.skip("no self-supervised task type in this tree")
    for i in range(4):
        write_dicom(tmp_path / "scans" / f"s{i}.dcm", np.full((8, 8), i), PatientID=f"P{i}")
    task = dicom_task(tmp_path, tmp_path / "scans", type="self-supervised", classes=())
    data = load_task_data(task)
    assert sum(map(len, data.splits.values())) == 4
