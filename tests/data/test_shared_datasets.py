"""The bench site configs load the real datasets of ../shared/data (skipped where absent)."""

from __future__ import annotations

import csv
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from umedpt.config import load_site_config
from umedpt.data.loading import load_task_data
from umedpt.data.preview import summarize

pytestmark = pytest.mark.shared_data

REPO = Path(__file__).resolve().parents[2]
SITES = REPO / "bench" / "sites"
DATA = (REPO.parent / "shared" / "data").resolve()  # as the site files resolve it

FOUR_SITES = ("breastmnist", "pbc_blood_cells", "hc18_fetal_head", "bccd")
NEW_SITES = ("isic2017_dermoscopy", "nih_cxr14_64px")  # issue 19: two new modalities

if not DATA.is_dir():
    pytest.skip(f"shared datasets not found at {DATA}", allow_module_level=True)


def _site(loaded, name: str):
    """The loaded site, or skip where its folder is missing (an older ../shared/data)."""
    if name not in loaded:
        pytest.skip(f"{DATA / name} not found")
    return loaded[name]


def test_every_bench_site_is_checked_here():
    """A new site file in bench/sites gets its own test here (the scripts use them all)."""
    names = {load_site_config(f).name for f in SITES.glob("*.toml")}
    assert names == {*FOUR_SITES, *NEW_SITES}


@pytest.fixture(scope="module")
def loaded():
    """Load each site once; records (task, data, warnings, reads): ``reads`` counts each
    file the load opened with PIL or numpy, as ``(reader, path)``."""
    out = {}
    real_open, real_load = PIL.Image.open, np.load
    for name in (*FOUR_SITES, *NEW_SITES):
        if not (DATA / name).is_dir():
            continue
        site = load_site_config(SITES / f"{name}.toml")
        reads: Counter[tuple[str, str]] = Counter()

        def opened(fp, *args, _reads=reads, **kwargs):
            _reads["PIL", str(fp)] += 1
            return real_open(fp, *args, **kwargs)

        def loaded_npz(file, *args, _reads=reads, **kwargs):
            _reads["numpy", str(file)] += 1
            return real_load(file, *args, **kwargs)

        with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as caught:
            patch.setattr(PIL.Image, "open", opened)
            patch.setattr(np, "load", loaded_npz)
            warnings.simplefilter("always")
            data = load_task_data(site.tasks[0])
        out[name] = (site.tasks[0], data, [str(w.message) for w in caught], reads)
    return out


def _sizes(data) -> tuple[int, int, int]:
    return tuple(len(data.splits[s]) for s in ("train", "val", "test"))


def test_breastmnist(loaded):
    task, data, caught, _ = _site(loaded, "breastmnist")
    assert _sizes(data) == (546, 78, 156) and not caught
    counts = summarize(task, data)["class_counts"]
    assert counts["train"] == {"malignant": 147, "normal-benign": 399}


def test_pbc(loaded):
    task, data, caught, _ = _site(loaded, "pbc_blood_cells")
    assert _sizes(data) == (800, 160, 240) and not caught
    counts = summarize(task, data)["class_counts"]
    assert set(counts["train"].values()) == {100} and set(counts["test"].values()) == {30}


def test_hc18(loaded):
    task, data, caught, _ = _site(loaded, "hc18_fetal_head")
    assert sum(_sizes(data)) == 333 and not caught
    assert all(n > 0 for n in _sizes(data))
    exams = {
        split: {Path(s.source).name.split("_")[0] for s in data.splits[split]}
        for split in ("train", "val", "test")
    }
    assert not (exams["train"] & exams["val"]) and not (exams["train"] & exams["test"])
    fg = summarize(task, data)["mask_foreground_fraction"]
    assert 0.2 < fg["median"] < 0.4


def test_bccd_drops_the_two_zero_area_boxes(loaded):
    task, data, caught, _ = _site(loaded, "bccd")
    assert sum(_sizes(data)) == 364 and _sizes(data) == (205, 87, 72)
    assert len(caught) == 1
    assert "dropped 2 zero-width/height boxes" in caught[0]
    assert "BloodImage_00338" in caught[0] and "BloodImage_00343" in caught[0]
    assert summarize(task, data)["box_counts"] == {"RBC": 4153, "WBC": 372, "Platelets": 361}


def _sources(data) -> set[str]:
    return {sample.source for split in data.splits.values() for sample in split}


def test_each_file_is_read_once_and_an_npz_once_per_array(loaded):
    """What keeps a load fast: no image or mask is decoded twice, and an .npz is opened once
    for its listing and once for each split's array, not once per sample."""
    _, data, _, reads = _site(loaded, "breastmnist")
    assert reads == {("numpy", str(DATA / "breastmnist" / "BreastMNIST.npz")): 1 + 3}
    assert sum(_sizes(data)) == 780
    for name in ("pbc_blood_cells", "bccd"):
        _, data, _, reads = _site(loaded, name)
        assert reads == {("PIL", source): 1 for source in _sources(data)}, name
    _, data, _, reads = _site(loaded, "hc18_fetal_head")  # an image and its mask per sample
    assert set(reads.values()) == {1} and len(reads) == 2 * 333
    assert _sources(data) <= {path for _, path in reads}


def test_isic_loads_with_the_official_split(loaded):
    """The official ISIC 2017 split; train: 374 melanoma, 1,372 nevi, 254 seborrheic keratoses."""
    task, data, caught, _ = _site(loaded, "isic2017_dermoscopy")
    assert _sizes(data) == (2000, 150, 600) and not caught
    labels = [int(s.targets["label"]) for s in data.splits["train"]]
    assert [labels.count(c) for c in range(len(task.classes))] == [374, 1372, 254]


def test_nih_is_split_by_patient(loaded):
    """The source's split is by image (30 patients in two splits); the site file re-splits the
    1,000 images 60 / 20 / 20 by patient. The patient ids come from NIH's own table, not from
    the file names the site file's group_pattern reads."""
    task, data, caught, _ = _site(loaded, "nih_cxr14_64px")
    assert not caught and _sizes(data) == (599, 200, 201)
    with (DATA / "nih_cxr14_64px" / "Data_Entry_2017_subset.csv").open(newline="") as handle:
        patient_of = {row["Image Index"]: row["Patient ID"] for row in csv.DictReader(handle)}
    patients = {
        split: {patient_of[Path(s.source).name] for s in data.splits[split]}
        for split in ("train", "val", "test")
    }
    assert sum(map(len, patients.values())) == len(set(patient_of.values())) == 264
    assert not (patients["train"] & patients["val"])
    assert not (patients["train"] & patients["test"])
    assert not (patients["val"] & patients["test"])
    for split in ("train", "val", "test"):  # both classes in every split
        labels = {int(s.targets["label"]) for s in data.splits[split]}
        assert labels == {0, 1}, split
