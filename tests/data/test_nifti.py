"""NIfTI sites: slices of small volumes written here with nibabel, in both voxel orders."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from umedpt.config import SplitConfig
from umedpt.data.demo_nifti import write_nifti_site
from umedpt.data.loading import load_task, load_task_data
from umedpt.data.readers import read_records
from umedpt.errors import ConfigError, DataError

SHAPE = (12, 10, 6)  # x, y, z: three different lengths, so a swapped axis shows
LESION = (slice(3, 7), slice(2, 5), slice(2, 4))  # foreground on axial slices 2 and 3
BODY_HU, LESION_HU = 40, 240
WINDOW = [140, 400]  # low -60, high 340: body -> 63.75, lesion -> 191.25


def _ras() -> np.ndarray:
    return np.diag([1.0, 1.0, 2.0, 1.0])


def _lps(shape: tuple[int, ...]) -> np.ndarray:
    """x and y run backwards: the same world positions for data reversed along x and y."""
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])
    affine[0, 3], affine[1, 3] = shape[0] - 1, shape[1] - 1
    return affine


def _save(data: np.ndarray, path: Path, *, lps: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = data[::-1, ::-1] if lps else data
    nib.Nifti1Image(stored, _lps(data.shape) if lps else _ras()).to_filename(str(path))
    return path


def _case(root: Path, name: str, *, image_lps: bool = True, lesion: bool = True) -> None:
    """A CT-like image (stored LPS by default) and its mask (stored RAS)."""
    hu = np.full(SHAPE, BODY_HU, dtype=np.int16)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    if lesion:
        hu[LESION], mask[LESION] = LESION_HU, 1
    _save(hu, root / "images" / f"{name}.nii.gz", lps=image_lps)
    _save(mask, root / "masks" / f"{name}.nii.gz")


def _seg_task(make_task, root: Path, **options):
    return make_task(
        type="segmentation",
        format="nifti",
        path=root,
        classes=("lesion",),
        options={"window": WINDOW, **options},
    )


def test_image_and_mask_in_other_voxel_orders_land_on_the_same_pixels(tmp_path, make_task):
    _case(tmp_path / "ct", "a")
    records = read_records(_seg_task(make_task, tmp_path / "ct"))
    assert [r.image.index for r in records] == list(range(SHAPE[2]))  # "all" slices, axial
    assert {r.group for r in records} == {"volume:images/a.nii.gz"}
    for rec in records:
        image = rec.image.decoder.read_image(rec.image)
        mask = rec.targets["mask"].decoder.read_mask(rec.targets["mask"])
        assert image.shape == (SHAPE[1], SHAPE[0], 3) and mask.shape == (SHAPE[1], SHAPE[0])
        # the windowed HU values, exactly where the mask says
        assert set(np.unique(image[mask == 1])) <= {191}
        assert set(np.unique(image[mask == 0])) == {64}
        assert mask.any() == (rec.image.index in (2, 3))
    # front up, x across: the lesion (x 3..6, y 2..4 of 0..9; +y is anterior) sits low
    mask = records[2].targets["mask"].decoder.read_mask(records[2].targets["mask"])
    assert list(np.flatnonzero(mask.any(axis=1))) == [5, 6, 7]
    assert list(np.flatnonzero(mask.any(axis=0))) == [3, 4, 5, 6]


def test_slice_axis_picks_the_anatomical_axis(tmp_path, make_task):
    _case(tmp_path / "ct", "a")
    records = read_records(_seg_task(make_task, tmp_path / "ct", slice_axis="coronal"))
    assert len(records) == SHAPE[1] and {r.image.member for r in records} == {"coronal"}
    image = records[0].image.decoder.read_image(records[0].image)
    assert image.shape[:2] == (SHAPE[2], SHAPE[0])  # superior up, x across
    by_number = read_records(_seg_task(make_task, tmp_path / "ct", slice_axis=1))
    assert [r.image for r in by_number] == [r.image for r in records]


def test_slices_foreground_and_seeded_shares(tmp_path, make_task):
    root = tmp_path / "ct"
    _case(root, "a")
    foreground = read_records(_seg_task(make_task, root, slices="foreground"))
    assert [r.image.index for r in foreground] == [2, 3]

    def chosen(seed: int) -> list[int]:
        task = _seg_task(make_task, root, slices={"foreground": 1.0, "background": 0.5})
        task = type(task)(**{**task.__dict__, "split": SplitConfig(seed=seed)})
        return [r.image.index for r in read_records(task)]

    picks = [chosen(seed) for seed in range(6)]
    assert all(len(p) == 4 and {2, 3} <= set(p) for p in picks)  # 2 + half of 4 empty ones
    assert chosen(0) == picks[0]  # the same seed draws the same slices
    assert len({tuple(p) for p in picks}) > 1  # and the seed matters


def test_percentiles_make_mr_gain_and_offset_irrelevant(tmp_path, make_task):
    rng = np.random.default_rng(0)
    signal = rng.random(SHAPE).astype(np.float32)
    outputs = []
    for name, gain, offset in (("low", 1.0, 0.0), ("high", 900.0, 50.0)):
        folder = tmp_path / name
        _save(signal * gain + offset, folder / "v.nii")
        (folder / "labels.csv").write_text("path,label\nv.nii,b\n")
        task = make_task(
            type="classification",
            format="nifti",
            path=folder / "labels.csv",
            classes=("a", "b"),
            options={"percentiles": [1.0, 99.0]},
        )
        records = read_records(task)
        assert len(records) == SHAPE[2] and {r.targets["label"] for r in records} == {1}
        outputs.append(np.stack([r.image.decoder.read_image(r.image) for r in records]))
    assert np.abs(outputs[0].astype(int) - outputs[1].astype(int)).max() <= 1
    assert outputs[0].min() == 0 and outputs[0].max() == 255


def test_all_slices_of_a_volume_share_a_split_and_the_cache_serves_later_loads(tmp_path, make_task):
    root = tmp_path / "ct"
    for i in range(8):
        _case(root, f"case{i}", image_lps=i % 2 == 0)
    task = _seg_task(make_task, root)
    first = load_task(task, cache_dir=tmp_path / "cache")
    split_of: dict[str, set[str]] = {}
    for split, samples in first.data.splits.items():
        assert samples, split
        for sample in samples:
            split_of.setdefault(sample.source.split("[")[0], set()).add(split)
    assert len(split_of) == 8 and all(len(s) == 1 for s in split_of.values())
    again = load_task(task, cache_dir=tmp_path / "cache")
    assert not first.from_cache and again.from_cache
    for split, samples in first.data.splits.items():
        for a, b in zip(samples, again.data.splits[split], strict=True):
            assert a.source == b.source and a.image.equal(b.image)
            assert a.targets["mask"].equal(b.targets["mask"])


def test_unlabelled_slices_from_a_segmentation_layout_or_a_csv(tmp_path, make_task):
    root = tmp_path / "ct"
    _case(root, "a")
    _case(root, "b", lesion=False)
    (root / "list.csv").write_text("path,label\nimages/a.nii.gz,x\n")
    kw = dict(type="self-supervised", format="nifti", classes=("image",))
    from_folder = load_task_data(make_task(**kw, path=root, options={"window": WINDOW}))
    samples = [s for split in from_folder.splits.values() for s in split]
    assert len(samples) == 2 * SHAPE[2] and all(not s.targets for s in samples)
    assert {s.source.split("[")[0] for s in samples} == {
        str(root / "images" / "a.nii.gz"),
        str(root / "images" / "b.nii.gz"),
    }  # images/ only: no mask is read as an image
    from_csv = read_records(make_task(**kw, path=root / "list.csv"))
    assert [r.image.index for r in from_csv] == list(range(SHAPE[2]))
    assert all(r.targets == {} for r in from_csv)


# --- bad input -------------------------------------------------------------------------


def test_a_mask_of_another_shape_names_the_mask_and_its_image(tmp_path, make_task):
    root = tmp_path / "ct"
    _case(root, "a")
    _save(np.zeros((12, 10, 5), np.uint8), root / "masks" / "a.nii.gz")
    with pytest.raises(DataError, match=r"mask shape \(12, 10, 5\) differs") as info:
        read_records(_seg_task(make_task, root))
    assert info.value.source == str(root / "masks" / "a.nii.gz")
    assert str(root / "images" / "a.nii.gz") in str(info.value)


def test_a_volume_with_nan_is_named_and_can_be_skipped(tmp_path, make_task):
    root = tmp_path / "mr"
    good = np.ones(SHAPE, np.float32)
    bad = good.copy()
    bad[1, 1, 1] = np.nan
    _save(good, root / "good.nii.gz")
    _save(bad, root / "bad.nii.gz")
    (root / "labels.csv").write_text("path,label\ngood.nii.gz,a\nbad.nii.gz,b\n")
    kw = dict(type="classification", format="nifti", path=root / "labels.csv", classes=("a", "b"))
    with pytest.raises(DataError, match="1 NaN or infinite voxels") as info:
        load_task_data(make_task(**kw, split=SplitConfig(val=0.0, test=0.0)))
    assert info.value.source == str(root / "bad.nii.gz")
    with pytest.warns(UserWarning, match="skipped 6 bad samples"):
        data = load_task_data(make_task(**kw, skip_bad_samples=True))
    assert sum(map(len, data.splits.values())) == SHAPE[2]
    assert {src for src, _ in data.skipped} == {str(root / "bad.nii.gz")}


@pytest.mark.parametrize(
    ("options", "field", "problem"),
    [
        ({"window": [40, 0]}, "options.window", "window width must be positive"),
        ({"window": [40]}, "options.window", r"must be \[center, width\]"),
        ({"slices": "some"}, "options.slices", 'must be "all", "foreground"'),
        ({"slices": {"foreground": 0, "background": 0}}, "options.slices", "keeps no slice"),
        ({"slice_axis": 3}, "options.slice_axis", "must be 0, 1, 2"),
        ({"percentiles": [50, 50]}, "options.percentiles", "low < high"),
        ({"window": [40, 400], "percentiles": [1, 99]}, "options.percentiles", "not both"),
        ({"windows": [40, 400]}, "options.windows", "unknown option"),
    ],
)
def test_bad_options_name_their_field(tmp_path, make_task, options, field, problem):
    _case(tmp_path / "ct", "a")
    task = make_task(
        type="segmentation", format="nifti", path=tmp_path / "ct", classes=("x",), options=options
    )
    with pytest.raises(ConfigError, match=problem) as info:
        read_records(task)
    assert info.value.field == f"tasks[0].{field}"


def test_a_missing_label_names_the_row_and_the_column(tmp_path, make_task):
    _save(np.ones(SHAPE, np.float32), tmp_path / "v.nii.gz")
    (tmp_path / "labels.csv").write_text("path,label\nv.nii.gz,a\nv.nii.gz,\n")
    task = make_task(
        type="classification", format="nifti", path=tmp_path / "labels.csv", classes=("a", "b")
    )
    with pytest.raises(DataError, match="missing label \\(column 'label'\\)") as info:
        read_records(task)
    assert info.value.source == f"{tmp_path / 'labels.csv'}, row 3"


def test_check_site_exits_2_naming_the_bad_volume(tmp_path):
    from umedpt_fl.cli import app

    site = write_nifti_site(tmp_path / "demo", volumes=4)
    bad = tmp_path / "demo" / "clinic-nifti" / "mr" / "subject_001.nii.gz"
    data = np.asarray(nib.load(str(bad)).dataobj).copy()
    data[0, 0, 0] = np.nan
    nib.Nifti1Image(data, np.eye(4)).to_filename(str(bad))
    result = CliRunner().invoke(app, ["check-site", str(site), "--no-cache"])
    assert result.exit_code == 2, result.output
    assert "subject_001.nii.gz" in result.output and "NaN" in result.output


# --- the demo site ---------------------------------------------------------------------


def test_demo_site_is_reproducible_and_check_site_previews_both_tasks(tmp_path):
    from umedpt_fl.cli import app

    site = write_nifti_site(tmp_path / "a", volumes=4)
    write_nifti_site(tmp_path / "b", volumes=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files) == 14  # 4 images, 4 masks, 4 MR volumes, labels.csv, site file
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    preview = tmp_path / "preview.png"
    result = CliRunner().invoke(app, ["check-site", str(site), "--preview", str(preview)])
    assert result.exit_code == 0, result.output
    assert "mask_foreground_fraction" in result.output and "site OK" in result.output
    for task in ("ct-lesions", "mr-contrast"):
        assert (tmp_path / f"preview-{task}.png").stat().st_size > 5000
