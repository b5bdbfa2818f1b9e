"""Each reader on tiny generated fixtures, through to loaded Samples."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from umedpt.config import SplitConfig
from umedpt.data.images import ImageSource
from umedpt.data.loading import load_task_data
from umedpt.data.readers import formats_for, get_reader, read_records
from umedpt.data.samples import ImageRef
from umedpt.data.splits import assign_splits
from umedpt.errors import ConfigError, DataError, RegistryError
from umedpt.tasks import TASK_TYPES


def _all(data):
    return [s for split in ("train", "val", "test") for s in data.splits[split]]


# --- registry ----------------------------------------------------------------------------


def test_formats_per_task_type():
    assert set(formats_for("classification")) == {"npz", "csv", "class-folders", "dicom", "nifti"}
    assert set(formats_for("multilabel")) == {"npz", "csv", "dicom"}
    assert set(formats_for("segmentation")) == {"mask-folder", "dicom", "nifti"}
    assert set(formats_for("detection")) == {"voc", "coco"}


def test_every_task_type_has_a_format():
    assert all(formats_for(name) for name in TASK_TYPES.names())


def test_one_format_name_has_a_reader_per_task_type():
    single, multi = get_reader("csv", "classification"), get_reader("csv", "multilabel")
    assert (single.task_type, multi.task_type) == ("classification", "multilabel")
    assert single.read_fn is not multi.read_fn


def test_unknown_format_lists_valid_names():
    with pytest.raises(RegistryError, match="valid names: .*class-folders.*voc"):
        get_reader("nrrd", "classification")  # not a format here
    with pytest.raises(RegistryError, match="data format for segmentation 'csv'.*mask-folder"):
        get_reader("csv", "segmentation")


def test_a_format_of_another_task_type_is_a_config_error(tmp_path, make_task):
    task = make_task(type="segmentation", format="csv", path=tmp_path / "x.csv", classes=("a",))
    # the message lists every type 'csv' holds: classification, multilabel (and any new one)
    holds = r"format 'csv' holds classification or multilabel( or [\w-]+)* data, not segmentation"
    with pytest.raises(ConfigError, match=holds) as info:
        read_records(task)
    assert info.value.field == "tasks[0].format" and "mask-folder" in info.value.problem


def test_unknown_option_names_the_field(tmp_path, make_task):
    (tmp_path / "data.csv").write_text("path,label\n")
    task = make_task(
        type="classification",
        format="csv",
        path=tmp_path / "data.csv",
        classes=("a", "b"),
        options={"lable_column": "x"},
    )
    with pytest.raises(ConfigError) as info:
        read_records(task)
    assert info.value.field == "tasks[0].options.lable_column"
    assert "label_column" in str(info.value) and "site.toml" in str(info.value)


def test_option_with_wrong_type(tmp_path, make_task):
    (tmp_path / "data.csv").write_text("path,label\n")
    task = make_task(
        type="classification",
        format="csv",
        path=tmp_path / "data.csv",
        classes=("a", "b"),
        options={"label_column": 3},
    )
    with pytest.raises(ConfigError, match="options.label_column.*must be a str"):
        read_records(task)


# --- npz -------------------------------------------------------------------------------


def test_npz_medmnist_layout(tmp_path, make_task):
    rng = np.random.default_rng(0)
    path = tmp_path / "m.npz"
    np.savez(
        path,
        train_images=rng.integers(0, 255, (5, 28, 28), dtype=np.uint8),
        train_labels=np.array([[0], [1], [1], [0], [1]], dtype=np.uint8),  # (N, 1) official layout
        val_images=rng.integers(0, 255, (2, 28, 28), dtype=np.uint8),
        val_labels=np.array([0, 1], dtype=np.uint8),
        test_images=rng.integers(0, 255, (3, 28, 28, 3), dtype=np.uint8),  # RGB variant
        test_labels=np.array([1, 1, 0], dtype=np.uint8),
    )
    task = make_task(type="classification", format="npz", path=path, classes=("a", "b"))
    records = read_records(task)
    assert [r.split for r in records].count("train") == 5
    assert records[1].image == ImageRef(path, "train_images", 1)
    assert records[1].targets == {"label": 1}
    data = load_task_data(task)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 5, "val": 2, "test": 3}
    sample = data["test"][2]
    assert sample.image.shape == (3, 32, 32) and sample.image.dtype == torch.uint8
    assert sample.targets == {"label": 0} and sample.original_size == (28, 28)
    assert "m.npz[test_images][2]" in sample.source


def test_npz_without_split_is_split_by_seed(tmp_path, make_task):
    path = tmp_path / "m.npz"
    np.savez(path, images=np.zeros((20, 8, 8), np.uint8), labels=np.arange(20) % 2)
    task = make_task(type="classification", format="npz", path=path, classes=("a", "b"))
    data = load_task_data(task)
    sizes = {k: len(v) for k, v in data.splits.items()}
    assert sum(sizes.values()) == 20 and sizes["val"] == 3 and sizes["test"] == 3


# --- csv -------------------------------------------------------------------------------


def _csv_fixture(tmp_path: Path, save_png, grey, rows: list[str]) -> Path:
    for i in range(4):
        save_png(tmp_path / "img" / f"{i}.png", grey(10 + i, 12))
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path


def test_csv_with_class_names_ints_and_split_aliases(tmp_path, make_task, save_png, grey):
    csv_path = _csv_fixture(
        tmp_path,
        save_png,
        grey,
        [
            "file,diagnosis,fold",
            "img/0.png,benign,train",
            "img/1.png,1,validation",
            "img/2.png,malignant,Valid",
            "img/3.png,0,test",
        ],
    )
    task = make_task(
        type="classification",
        format="csv",
        path=csv_path,
        classes=("benign", "malignant"),
        options={"path_column": "file", "label_column": "diagnosis", "split_column": "fold"},
    )
    records = read_records(task)
    assert [(r.targets["label"], r.split) for r in records] == [
        (0, "train"),
        (1, "val"),
        (1, "val"),
        (0, "test"),
    ]
    assert records[0].image.path == tmp_path / "img" / "0.png"
    data = load_task_data(task)
    assert [s.original_size for s in data["val"]] == [(11, 12), (12, 12)]


def test_csv_images_root_option(tmp_path, make_task, save_png, grey):
    save_png(tmp_path / "pics" / "a.png", grey(8, 8))
    (tmp_path / "meta").mkdir()
    csv_path = tmp_path / "meta" / "l.csv"
    csv_path.write_text("path,label\na.png,1\n")
    task = make_task(
        type="classification",
        format="csv",
        path=csv_path,
        classes=("x", "y"),
        options={"images_root": "pics"},  # relative to the site file's folder
    )
    assert read_records(task)[0].image.path == tmp_path / "pics" / "a.png"


def test_csv_empty_split_column_ignores_the_files_split(tmp_path, make_task, save_png, grey):
    """A CSV whose split puts one patient in two splits (NIH's subset) is re-split by patient."""
    rows = ["path,label,split"]
    for patient in range(6):
        for image, split in enumerate(("train", "test")):  # each patient in train and test
            save_png(tmp_path / "img" / f"{patient:03d}_{image}.png", grey(8, 8))
            rows.append(f"img/{patient:03d}_{image}.png,{patient % 2},{split}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    by_patient = SplitConfig(val=0.2, test=0.2, seed=0, group_pattern=r"^(\d+)_")

    def splits_of(options):
        task = make_task(
            type="classification",
            format="csv",
            path=tmp_path / "labels.csv",
            classes=("a", "b"),
            split=by_patient,
            options=options,
        )
        records = read_records(task)
        patients: dict[str, set[str]] = {}
        for split, chosen in assign_splits(records, task.split).items():
            for r in chosen:
                patients.setdefault(r.image.path.name.split("_")[0], set()).add(split)
        return [r.split for r in records], patients

    kept, crossing = splits_of({"split_column": "split"})
    assert set(kept) == {"train", "test"} and all(len(s) == 2 for s in crossing.values())
    given, patients = splits_of({"split_column": ""})
    assert set(given) == {None}
    assert all(len(s) == 1 for s in patients.values())
    assert {split for (split,) in patients.values()} == {"train", "val", "test"}


@pytest.mark.parametrize(
    ("label", "message"),
    [("7", "label 7 is out of range for 2 classes"), ("cat", "label 'cat' is neither")],
)
def test_csv_bad_label_names_file_and_row(tmp_path, make_task, save_png, grey, label, message):
    csv_path = _csv_fixture(
        tmp_path, save_png, grey, ["path,label", "img/0.png,0", "img/1.png," + label]
    )
    task = make_task(type="classification", format="csv", path=csv_path, classes=("a", "b"))
    with pytest.raises(DataError, match=message) as info:
        read_records(task)
    assert info.value.source == f"{csv_path}, row 3"
    assert info.value.task == "t"


def test_csv_missing_column_is_config_error(tmp_path, make_task):
    (tmp_path / "l.csv").write_text("image,label\nx.png,0\n")
    task = make_task(
        type="classification", format="csv", path=tmp_path / "l.csv", classes=("a", "b")
    )
    with pytest.raises(ConfigError, match="no column 'path'") as info:
        read_records(task)
    assert info.value.field == "tasks[0].options.path_column"


def test_csv_without_split_is_split_deterministically(tmp_path, make_task, save_png, grey):
    rows = ["path,label"]
    for i in range(30):
        save_png(tmp_path / "img" / f"{i:02d}.png", grey(8, 8))
        rows.append(f"img/{i:02d}.png,{i % 2}")
    (tmp_path / "l.csv").write_text("\n".join(rows))
    task = make_task(
        type="classification", format="csv", path=tmp_path / "l.csv", classes=("a", "b")
    )
    first = load_task_data(task)
    second = load_task_data(task)
    names = {k: [s.source for s in v] for k, v in first.splits.items()}
    assert names == {k: [s.source for s in v] for k, v in second.splits.items()}
    assert [len(names[k]) for k in ("train", "val", "test")] == [22, 4, 4]


# --- class folders, image modes ----------------------------------------------------------


def test_class_folders_grey_rgb_16bit_palette_rgba(tmp_path, make_task, save_png, grey):
    root = tmp_path / "cls"
    save_png(root / "a" / "grey.png", grey(20, 30, 77))
    save_png(root / "a" / "rgb.jpg", np.full((40, 10, 3), (200, 10, 10), np.uint8))
    sixteen = np.linspace(1000, 3000, 12 * 14).reshape(12, 14).astype(np.uint16)
    save_png(root / "b" / "deep.png", sixteen)
    save_png(root / "b" / "palette.png", grey(9, 9, 3), mode="L")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 1] = 180
    rgba[..., 3] = 255
    save_png(root / "b" / "rgba.png", rgba)
    from PIL import Image

    Image.open(root / "b" / "palette.png").convert("P").save(root / "b" / "palette.png")
    (root / "b" / "notes.txt").write_text("not an image")
    task = make_task(type="classification", format="class-folders", path=root, classes=("a", "b"))
    records = read_records(task)
    assert sorted((r.image.path.name, r.targets["label"]) for r in records) == [
        ("deep.png", 1),
        ("grey.png", 0),
        ("palette.png", 1),
        ("rgb.jpg", 0),
        ("rgba.png", 1),
    ]
    with ImageSource() as source:
        deep = source.read_image(ImageRef(root / "b" / "deep.png"))
        rgb = source.read_image(ImageRef(root / "a" / "rgb.jpg"))
        pal = source.read_image(ImageRef(root / "b" / "palette.png"))
        green = source.read_image(ImageRef(root / "b" / "rgba.png"))
    assert deep.dtype == np.uint8 and deep.shape == (12, 14, 3)
    assert deep.min() == 0 and deep.max() == 255  # per-image min-max scaling of 16-bit data
    assert rgb.shape == (40, 10, 3) and rgb[..., 0].mean() > 150 and rgb[..., 2].mean() < 60
    assert pal.shape == (9, 9, 3) and (pal == 3).all()
    assert green.shape == (16, 16, 3) and (green[..., 1] == 180).all()
    data = load_task_data(task)
    assert all(s.image.shape == (3, 32, 32) for s in _all(data))
    assert sorted(s.original_size for s in _all(data)) == sorted(
        [(20, 30), (40, 10), (12, 14), (9, 9), (16, 16)]
    )


def test_class_folder_not_in_classes(tmp_path, make_task, save_png, grey):
    save_png(tmp_path / "cls" / "a" / "1.png", grey(8, 8))
    save_png(tmp_path / "cls" / "zebra" / "1.png", grey(8, 8))
    task = make_task(
        type="classification", format="class-folders", path=tmp_path / "cls", classes=("a", "b")
    )
    with pytest.raises(DataError, match="folder 'zebra' is not one of the task's classes") as info:
        read_records(task)
    assert info.value.source.endswith("zebra")


def test_missing_path_is_config_error(tmp_path, make_task):
    task = make_task(
        type="classification", format="class-folders", path=tmp_path / "nope", classes=("a", "b")
    )
    with pytest.raises(ConfigError, match="folder not found") as info:
        read_records(task)
    assert info.value.field == "tasks[0].path"


# --- mask folder -----------------------------------------------------------------------


def test_mask_folder_with_suffix_and_255_masks(tmp_path, make_task, save_png, grey):
    root = tmp_path / "seg"
    for i, (h, w) in enumerate([(40, 60), (30, 30), (64, 48)]):
        save_png(root / "images" / f"case{i}.png", grey(h, w, 50 + i))
        mask = np.zeros((h, w), np.uint8)
        mask[: h // 2, : w // 2] = 255  # saved 0/255 for viewing; one class -> read as 0/1
        save_png(root / "labels" / f"case{i}_mask.png", mask)
    task = make_task(
        type="segmentation",
        format="mask-folder",
        path=root,
        classes=("lesion",),
        options={"masks": "labels", "mask_suffix": "_mask"},
    )
    data = load_task_data(task)
    samples = _all(data)
    assert len(samples) == 3
    for mask in (s.targets["mask"] for s in samples):
        assert mask.shape == (32, 32) and mask.dtype == torch.uint8
        assert set(mask.unique().tolist()) == {0, 1}
        assert abs(float((mask > 0).float().mean()) - 0.25) < 0.05


def test_mask_folder_multiclass_values_kept(tmp_path, make_task, save_png, grey):
    root = tmp_path / "seg"
    mask = np.zeros((20, 20), np.uint8)
    mask[:10] = 1
    mask[10:, :5] = 2
    for i in range(3):
        save_png(root / "images" / f"{i}.png", grey(20, 20))
        save_png(root / "masks" / f"{i}.png", mask)
    task = make_task(
        type="segmentation", format="mask-folder", path=root, classes=("a", "b"), image_size=32
    )
    sample = _all(load_task_data(task))[0]
    assert sample.targets["mask"].unique().tolist() == [0, 1, 2]


@pytest.mark.parametrize("missing", ["mask", "image"])
def test_mask_folder_unpaired_file_is_named(tmp_path, make_task, save_png, grey, missing):
    root = tmp_path / "seg"
    save_png(root / "images" / "a.png", grey(8, 8))
    save_png(root / "masks" / "a.png", grey(8, 8, 0))
    lonely = root / ("images" if missing == "mask" else "masks") / "b.png"
    save_png(lonely, grey(8, 8, 0))
    task = make_task(type="segmentation", format="mask-folder", path=root, classes=("x",))
    with pytest.raises(DataError) as info:
        read_records(task)
    assert info.value.source == str(lonely)


# --- VOC -------------------------------------------------------------------------------


def test_voc_boxes_splits_empty_images_and_zero_area(tmp_path, make_task, write_voc):
    root = write_voc(
        tmp_path / "voc",
        {
            "a": ((100, 200), [("cell", (10, 20, 50, 60)), ("blob", (100, 0, 200, 100))]),
            "b": ((50, 50), []),  # an image without objects is kept
            "c": ((50, 50), [("cell", (5, 5, 5, 5)), ("cell", (1, 1, 20, 20))]),  # zero area
        },
    )
    sets = root / "ImageSets" / "Main"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("a\nc\n")
    (sets / "val.txt").write_text("b\n")
    task = make_task(type="detection", format="voc", path=root, classes=("cell", "blob"))
    records = {r.image.path.stem: r for r in read_records(task)}
    assert records["a"].targets == {
        "boxes": ((10, 20, 50, 60), (100, 0, 200, 100)),
        "box_labels": (0, 1),
    }
    assert records["a"].split == "train"
    assert records["b"].targets["boxes"] == () and records["b"].split == "val"
    with pytest.warns(
        UserWarning, match=r"dropped 1 zero-width/height boxes from 1 images: .*c\.png"
    ):
        data = load_task_data(task)
    by_name = {Path(s.source).stem: s.targets for s in _all(data)}
    a = by_name["a"]
    assert a["boxes"].dtype == torch.float32 and a["box_labels"].dtype == torch.int64
    # 200 x 100 image resized to 32 x 32: x scaled by 0.16, y by 0.32
    expected = torch.tensor([[1.6, 6.4, 8.0, 19.2], [16, 0, 32, 32]])
    torch.testing.assert_close(a["boxes"], expected)
    assert by_name["b"]["boxes"].shape == (0, 4) and by_name["b"]["box_labels"].shape == (0,)
    assert by_name["c"]["boxes"].shape == (1, 4)
    assert len(data["train"]) == 2 and len(data["val"]) == 1


def test_voc_box_within_tolerance_is_clipped(tmp_path, make_task, write_voc):
    root = write_voc(tmp_path / "voc", {"a": ((32, 32), [("cell", (-0.5, 0, 32.8, 20))])})
    task = make_task(type="detection", format="voc", path=root, classes=("cell",))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample = _all(load_task_data(task))[0]
    torch.testing.assert_close(sample.targets["boxes"], torch.tensor([[0.0, 0.0, 32.0, 20.0]]))


def test_voc_unknown_class_names_xml(tmp_path, make_task, write_voc):
    root = write_voc(tmp_path / "voc", {"a": ((32, 32), [("dog", (1, 1, 5, 5))])})
    task = make_task(type="detection", format="voc", path=root, classes=("cell",))
    with pytest.raises(DataError, match="class 'dog'") as info:
        read_records(task)
    assert info.value.source == str(root / "Annotations" / "a.xml")


# --- COCO ------------------------------------------------------------------------------


def test_coco_xywh_to_xyxy(tmp_path, make_task, save_png, grey):
    save_png(tmp_path / "imgs" / "one.png", grey(40, 80))
    save_png(tmp_path / "imgs" / "two.png", grey(20, 20))
    doc = {
        "images": [{"id": 7, "file_name": "one.png"}, {"id": 9, "file_name": "two.png"}],
        "categories": [{"id": 1, "name": "wbc"}, {"id": 2, "name": "rbc"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 2, "bbox": [10, 5, 20, 10]},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 8, 8]},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    task = make_task(
        type="detection",
        format="coco",
        path=tmp_path / "ann.json",
        classes=("rbc", "wbc"),
        options={"images_root": "imgs"},
    )
    records = {r.image.path.name: r for r in read_records(task)}
    assert records["one.png"].targets == {
        "boxes": ((10, 5, 30, 15), (0, 0, 8, 8)),
        "box_labels": (0, 1),
    }
    assert records["two.png"].targets == {"boxes": (), "box_labels": ()}
    assert len(_all(load_task_data(task))) == 2


# --- splits and groups -----------------------------------------------------------------


def test_group_pattern_keeps_groups_together(tmp_path, make_task, save_png, grey):
    root = tmp_path / "seg"
    for exam in range(12):
        for view in ("", "_2", "_3"):
            stem = f"{exam:03d}{view}_HC"
            save_png(root / "images" / f"{stem}.png", grey(8, 8))
            save_png(root / "masks" / f"{stem}.png", grey(8, 8, 0))
    task = make_task(
        type="segmentation",
        format="mask-folder",
        path=root,
        classes=("head",),
        split=SplitConfig(val=0.2, test=0.2, seed=3, group_pattern=r"^(\d+)_"),
    )
    records = read_records(task)
    assert {r.group for r in records} == {f"{e:03d}" for e in range(12)}
    splits = assign_splits(records, task.split)
    seen = {}
    for split, recs in splits.items():
        assert recs, f"{split} is empty"
        for r in recs:
            assert seen.setdefault(r.group, split) == split


def test_split_is_stable_and_seeded(tmp_path, make_task, save_png, grey):
    for i in range(40):
        save_png(tmp_path / "c" / ("a" if i % 2 else "b") / f"{i}.png", grey(4, 4))
    task = make_task(
        type="classification", format="class-folders", path=tmp_path / "c", classes=("a", "b")
    )
    records = read_records(task)

    def names(recs, seed):
        return {
            k: sorted(r.image.path.name for r in v)
            for k, v in assign_splits(recs, SplitConfig(seed=seed)).items()
        }

    assert names(records, 0) == names(list(reversed(records)), 0)
    assert names(records, 0) != names(records, 1)
    assert [len(v) for v in names(records, 0).values()] == [28, 6, 6]


@pytest.mark.parametrize("n", [3, 4, 5])
def test_tiny_datasets_keep_train_and_val_non_empty(tmp_path, make_task, save_png, grey, n):
    for i in range(n):
        save_png(tmp_path / "c" / "a" / f"{i}.png", grey(4, 4))
    task = make_task(
        type="classification", format="class-folders", path=tmp_path / "c", classes=("a", "b")
    )
    splits = assign_splits(read_records(task), SplitConfig(val=0.1, test=0.1))
    assert all(len(splits[s]) >= 1 for s in ("train", "val", "test"))
    assert sum(map(len, splits.values())) == n
