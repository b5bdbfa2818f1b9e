"""Multi-label data: the csv and npz readers for type "multilabel", through to Samples."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from umedpt.config import load_site_config
from umedpt.data.loading import load_task_data
from umedpt.data.preview import summarize, write_preview
from umedpt.data.readers import read_records
from umedpt.errors import ConfigError, DataError

CHEST = ("effusion", "mass", "nodule")


# --- csv -------------------------------------------------------------------------------


def _csv(tmp_path: Path, save_png, grey, rows: list[str]) -> Path:
    for i in range(4):
        save_png(tmp_path / "img" / f"{i}.png", grey(10 + i, 12))
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_csv_labels_column_lists_positive_classes(tmp_path, make_task, save_png, grey):
    path = _csv(
        tmp_path,
        save_png,
        grey,
        [
            "path,labels,split",
            "img/0.png,effusion|nodule,train",
            "img/1.png,,train",  # empty: no finding
            "img/2.png, mass | 0 ,val",  # names or indices, spaces ignored
            "img/3.png,nodule|nodule,test",  # a repeated class counts once
        ],
    )
    task = make_task(type="multilabel", format="csv", path=path, classes=CHEST)
    records = read_records(task)
    assert [(r.targets["labels"], r.split) for r in records] == [
        ((0, 2), "train"),
        ((), "train"),
        ((0, 1), "val"),
        ((2,), "test"),
    ]
    assert all(set(r.targets) == {"labels"} for r in records)
    data = load_task_data(task)
    assert [s.targets["labels"].tolist() for s in data["train"]] == [[1, 0, 1], [0, 0, 0]]
    assert set(data["val"][0].targets) == {"labels"}
    assert data["val"][0].targets["labels"].dtype == torch.uint8


def test_csv_column_and_separator_options(tmp_path, make_task, save_png, grey):
    path = _csv(tmp_path, save_png, grey, ["file,findings", "img/0.png,mass;nodule"])
    task = make_task(
        type="multilabel",
        format="csv",
        path=path,
        classes=CHEST,
        options={"path_column": "file", "labels_column": "findings", "separator": ";"},
    )
    assert read_records(task)[0].targets["labels"] == (1, 2)


def test_csv_single_label_options_are_not_multilabel_options(tmp_path, make_task):
    (tmp_path / "l.csv").write_text("path,label\nx.png,mass\n")
    task = make_task(
        type="multilabel",
        format="csv",
        path=tmp_path / "l.csv",
        classes=CHEST,
        options={"label_column": "label"},
    )
    with pytest.raises(ConfigError, match="labels_column") as info:
        read_records(task)
    assert info.value.field == "tasks[0].options.label_column"


def test_csv_without_labels_column_is_config_error(tmp_path, make_task):
    (tmp_path / "l.csv").write_text("path,label\nx.png,mass\n")
    task = make_task(type="multilabel", format="csv", path=tmp_path / "l.csv", classes=CHEST)
    with pytest.raises(ConfigError, match="no column 'labels'") as info:
        read_records(task)
    assert info.value.field == "tasks[0].options.labels_column"


def test_csv_unknown_class_names_the_row(tmp_path, make_task, save_png, grey):
    path = _csv(tmp_path, save_png, grey, ["path,labels", "img/0.png,mass", "img/1.png,mass|cyst"])
    task = make_task(type="multilabel", format="csv", path=path, classes=CHEST)
    with pytest.raises(DataError, match="label 'cyst' is neither a class name") as info:
        read_records(task)
    assert info.value.source == f"{path}, row 3"
    skipping = make_task(
        type="multilabel", format="csv", path=path, classes=CHEST, skip_bad_samples=True
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_task_data(skipping)
    assert sum(len(v) for v in data.splits.values()) == 1
    assert data.skipped == [(f"{path}, row 3", info.value.problem)]
    assert "skipped 1 bad samples" in str(caught[0].message)


# --- npz -------------------------------------------------------------------------------


def _chestmnist(path: Path, **overrides: np.ndarray) -> Path:
    """ChestMNIST's layout: {split}_images (N, 28, 28) uint8, {split}_labels (N, C) 0/1."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 255, (4, 28, 28), dtype=np.uint8),
        "train_labels": np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]], np.uint8),
        "val_images": rng.integers(0, 255, (2, 28, 28), dtype=np.uint8),
        "val_labels": np.array([[0, 0, 1], [0, 0, 0]], np.uint8),
        "test_images": rng.integers(0, 255, (1, 28, 28), dtype=np.uint8),
        "test_labels": np.array([[1, 0, 0]], np.uint8),
    }
    np.savez(path, **{**arrays, **overrides})
    return path


def test_npz_chestmnist_layout(tmp_path, make_task):
    path = _chestmnist(tmp_path / "chest.npz")
    task = make_task(type="multilabel", format="npz", path=path, classes=CHEST)
    records = read_records(task)
    train = [r.targets["labels"] for r in records if r.split == "train"]
    assert train == [(0, 2), (), (1,), (0, 1, 2)]
    data = load_task_data(task)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 4, "val": 2, "test": 1}
    assert data["train"][3].targets["labels"].tolist() == [1, 1, 1]
    assert data["val"][0].image.shape == (3, 32, 32)
    summary = summarize(task, data)
    assert summary["positives_per_class"] == {
        "train": {"effusion": 2, "mass": 2, "nodule": 2},
        "val": {"effusion": 0, "mass": 0, "nodule": 1},
        "test": {"effusion": 1, "mass": 0, "nodule": 0},
    }
    assert summary["labels_per_image"]["images_without_labels"] == 2
    out = write_preview(task, data, tmp_path / "preview.png", n=4)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_npz_float_labels_are_accepted(tmp_path, make_task):
    path = _chestmnist(tmp_path / "c.npz", test_labels=np.array([[1.0, 0.0, 1.0]]))
    task = make_task(type="multilabel", format="npz", path=path, classes=CHEST)
    assert [r.targets["labels"] for r in read_records(task) if r.split == "test"] == [(0, 2)]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([0], np.uint8), r"must be \(N, 3\), one 0/1 column per class, got \(1,\)"),
        (np.array([[1, 0]], np.uint8), r"must be \(N, 3\).*got \(1, 2\)"),
        (np.array([[2, 0, 0]], np.uint8), "must be 0 or 1"),
        (np.array([[0.5, 0, 0]]), "must be integers"),
    ],
)
def test_npz_bad_label_arrays(tmp_path, make_task, labels, message):
    path = _chestmnist(tmp_path / "c.npz", test_labels=labels)
    task = make_task(type="multilabel", format="npz", path=path, classes=CHEST)
    with pytest.raises(DataError, match=message) as info:
        read_records(task)
    assert "test_labels" in info.value.source


def test_npz_multi_column_labels_point_single_label_tasks_to_multilabel(tmp_path, make_task):
    path = _chestmnist(tmp_path / "c.npz")
    task = make_task(type="classification", format="npz", path=path, classes=CHEST)
    with pytest.raises(DataError, match='use type = "multilabel"'):
        read_records(task)


# --- site config -------------------------------------------------------------------------


def _site(tmp_path: Path, fmt: str, classes: str = '["effusion", "mass"]') -> Path:
    path = tmp_path / "site.toml"
    path.write_text(
        f'[[tasks]]\nname = "chest"\ntype = "multilabel"\nformat = "{fmt}"\n'
        f'path = "chest.npz"\nclasses = {classes}\n'
    )
    return path


@pytest.mark.parametrize("fmt", ["csv", "npz"])
def test_config_accepts_multilabel_csv_and_npz(tmp_path, fmt):
    task = load_site_config(_site(tmp_path, fmt)).tasks[0]
    assert (task.type, task.format) == ("multilabel", fmt)


def test_config_rejects_other_formats_and_a_single_class(tmp_path):
    with pytest.raises(ConfigError, match="multilabel data can be read from") as info:
        load_site_config(_site(tmp_path, "voc"))
    assert info.value.field == "tasks[0].format"
    with pytest.raises(ConfigError, match="multilabel needs at least 2 classes") as info:
        load_site_config(_site(tmp_path, "npz", '["effusion"]'))
    assert info.value.field == "tasks[0].classes"
