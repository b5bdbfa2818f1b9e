"""Readers of unlabelled images (self-supervised), and site files without classes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from umedpt.config import parse_site_config
from umedpt.data.loading import load_task_data
from umedpt.data.readers import formats_for, read_records
from umedpt.errors import ConfigError, DataError


def _png(path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 40), value, dtype=np.uint8)).save(path)


def _task(tmp_path, fmt: str, path: str, **extra):
    raw = {
        "tasks": [{"name": "u", "type": "self-supervised", "format": fmt, "path": path, **extra}]
    }
    return parse_site_config(raw, tmp_path / "site.toml").tasks[0]


def test_every_labelled_image_format_can_be_read_without_labels() -> None:
    assert {"folder", "csv", "npz", "class-folders", "mask-folder", "voc", "coco"} <= set(
        formats_for("self-supervised")
    )


def test_classes_are_optional_for_unlabelled_tasks_but_required_for_labelled(tmp_path) -> None:
    assert _task(tmp_path, "folder", "x").classes == ()
    assert _task(tmp_path, "folder", "x", classes=["a", "b"]).classes == ("a", "b")  # ignored
    raw = {"tasks": [{"name": "c", "type": "classification", "format": "npz", "path": "x"}]}
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.classes.*is required"):
        parse_site_config(raw, tmp_path / "site.toml")
    raw["tasks"][0]["classes"] = []
    with pytest.raises(ConfigError, match="non-empty list"):
        parse_site_config(raw, tmp_path / "site.toml")


def test_folder_reads_images_at_any_depth_and_skips_hidden_and_other_files(tmp_path) -> None:
    root = tmp_path / "scans"
    for rel in ("a.png", "day-1/b.png", "day-1/deep/c.jpg", ".hidden/d.png", "day-1/.e.png"):
        _png(root / rel)
    (root / "notes.txt").write_text("not an image")
    records = read_records(_task(tmp_path, "folder", "scans"))
    names = sorted(r.image.path.name for r in records)
    assert names == ["a.png", "b.png", "c.jpg"]
    assert all(r.split is None and r.targets == {} for r in records)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        read_records(_task(tmp_path, "folder", "empty"))


def test_labelled_folders_read_as_unlabelled_images(tmp_path) -> None:
    for cls in ("benign", "malignant"):
        _png(tmp_path / "lesions" / cls / f"{cls}.png")
    _png(tmp_path / "seg" / "images" / "x.png")
    _png(tmp_path / "seg" / "masks" / "x_mask.png", 1)
    voc = tmp_path / "VOC"
    for stem in ("i1", "i2", "i3"):
        _png(voc / "JPEGImages" / f"{stem}.png")
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "val.txt").write_text("i2\n")
    classes = {"classes": ["benign", "malignant"]}  # copied from the labelled task: ignored
    folders = read_records(_task(tmp_path, "class-folders", "lesions", **classes))
    assert sorted(r.image.path.name for r in folders) == ["benign.png", "malignant.png"]
    seg = _task(tmp_path, "mask-folder", "seg", options={"mask_suffix": "_mask"})
    assert [r.image.path.name for r in read_records(seg)] == ["x.png"]  # masks not read
    splits = {r.image.path.stem: r.split for r in read_records(_task(tmp_path, "voc", "VOC"))}
    assert splits == {"i1": None, "i2": "val", "i3": None}


def test_csv_reads_paths_and_splits_and_ignores_labels(tmp_path) -> None:
    for name in ("a.png", "b.png", "c.png"):
        _png(tmp_path / "img" / name)
    table = tmp_path / "table.csv"
    table.write_text("path,label,split\nimg/a.png,benign,train\nimg/b.png,,val\nimg/c.png,x,\n")
    task = _task(tmp_path, "csv", "table.csv", options={"label_column": "label"})
    records = read_records(task)
    assert [(r.image.path.name, r.split) for r in records] == [
        ("a.png", "train"),
        ("b.png", "val"),
        ("c.png", None),
    ]
    with pytest.raises(ConfigError, match="no column 'file'"):
        read_records(_task(tmp_path, "csv", "table.csv", options={"path_column": "file"}))


def test_npz_reads_image_arrays_without_labels(tmp_path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        f"{s}_images": rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        for s, n in (("train", 5), ("val", 2), ("test", 2))
    }
    np.savez(tmp_path / "x.npz", **arrays)  # no label arrays at all
    task = _task(tmp_path, "npz", "x.npz", image_size=32)
    records = read_records(task)
    assert [r.split for r in records].count("train") == 5 and len(records) == 9
    data = load_task_data(task)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 5, "val": 2, "test": 2}
    assert data["train"][0].image.shape == (3, 32, 32) and data["train"][0].targets == {}
    np.savez(tmp_path / "bad.npz", train_labels=np.zeros(3))
    with pytest.raises(DataError, match="no '<split>_images' arrays"):
        read_records(_task(tmp_path, "npz", "bad.npz"))
