"""Bad samples fail loudly, naming the file; with skip_bad_samples they are skipped and reported."""

from __future__ import annotations

import numpy as np
import pytest

from umedpt.data.loading import load_task_data
from umedpt.errors import DataError


def _folders(tmp_path, save_png, grey, n: int = 4):
    root = tmp_path / "cls"
    for i in range(n):
        save_png(root / ("a" if i % 2 else "b") / f"ok{i}.png", grey(16, 16))
    return root


def test_corrupt_image_names_the_file(tmp_path, make_task, save_png, grey):
    root = _folders(tmp_path, save_png, grey)
    bad = root / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    task = make_task(type="classification", format="class-folders", path=root, classes=("a", "b"))
    with pytest.raises(DataError, match="cannot read image") as info:
        load_task_data(task)
    assert info.value.source == str(bad) and info.value.task == "t"
    assert str(bad) in str(info.value)


def test_truncated_png_names_the_file(tmp_path, make_task, save_png, grey):
    root = _folders(tmp_path, save_png, grey)
    full = save_png(root / "b" / "cut.png", np.arange(64 * 64, dtype=np.uint8).reshape(64, 64))
    full.write_bytes(full.read_bytes()[:-200])
    task = make_task(type="classification", format="class-folders", path=root, classes=("a", "b"))
    with pytest.raises(DataError) as info:
        load_task_data(task)
    assert info.value.source == str(full)


def test_missing_csv_image_names_the_file(tmp_path, make_task):
    (tmp_path / "l.csv").write_text("path,label\nnowhere.png,0\n")
    task = make_task(
        type="classification", format="csv", path=tmp_path / "l.csv", classes=("a", "b")
    )
    with pytest.raises(DataError, match="not found") as info:
        load_task_data(task)
    assert info.value.source == str(tmp_path / "nowhere.png")


def test_npz_label_out_of_range(tmp_path, make_task):
    path = tmp_path / "m.npz"
    np.savez(
        path,
        train_images=np.zeros((3, 8, 8), np.uint8),
        train_labels=np.array([0, 1, 5]),
    )
    task = make_task(type="classification", format="npz", path=path, classes=("a", "b"))
    with pytest.raises(DataError, match="label 5 is out of range for 2 classes") as info:
        load_task_data(task)
    assert info.value.source == f"{path}[train_images][2]"


def test_mask_size_mismatch_names_the_mask(tmp_path, make_task, save_png, grey):
    root = tmp_path / "seg"
    save_png(root / "images" / "a.png", grey(20, 30))
    save_png(root / "masks" / "a.png", grey(20, 29, 0))
    task = make_task(type="segmentation", format="mask-folder", path=root, classes=("x",))
    with pytest.raises(DataError, match="mask is 29x20 .* is 30x20") as info:
        load_task_data(task)
    assert info.value.source == str(root / "masks" / "a.png")


def test_mask_value_above_classes(tmp_path, make_task, save_png, grey):
    root = tmp_path / "seg"
    save_png(root / "images" / "a.png", grey(8, 8))
    save_png(root / "masks" / "a.png", grey(8, 8, 3))
    task = make_task(type="segmentation", format="mask-folder", path=root, classes=("x", "y"))
    with pytest.raises(DataError, match=r"mask values must be 0 .* to 2 .*found 3\.\.3"):
        load_task_data(task)


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ((10, 10, 40, 20), "outside the 32x32 image"),
        ((-3, 0, 10, 10), "outside the 32x32 image"),
        ((20, 5, 10, 15), "is not \\(x_min, y_min, x_max, y_max\\)"),
    ],
)
def test_bad_box_names_the_image(tmp_path, make_task, write_voc, box, message):
    root = write_voc(tmp_path / "voc", {"a": ((32, 32), [("cell", box)])})
    task = make_task(type="detection", format="voc", path=root, classes=("cell",))
    with pytest.raises(DataError, match=message) as info:
        load_task_data(task)
    assert info.value.source == str(root / "JPEGImages" / "a.png")


def test_skip_bad_samples_warns_names_and_counts(tmp_path, make_task, save_png, grey):
    root = _folders(tmp_path, save_png, grey, n=6)
    bad1 = root / "a" / "zz_broken.png"
    bad1.write_bytes(b"garbage")
    bad2 = root / "b" / "zz_empty.jpg"
    bad2.write_bytes(b"")
    task = make_task(
        type="classification",
        format="class-folders",
        path=root,
        classes=("a", "b"),
        skip_bad_samples=True,
    )
    with pytest.warns(UserWarning, match="skipped 2 bad samples") as record:
        data = load_task_data(task)
    message = str(record[0].message)
    assert "zz_broken.png" in message and "zz_empty.jpg" in message
    assert sorted(src for src, _ in data.skipped) == sorted([str(bad1), str(bad2)])
    assert all("cannot read image" in why for _, why in data.skipped)
    assert sum(len(v) for v in data.splits.values()) == 6


def test_skip_bad_samples_covers_reader_problems(tmp_path, make_task, save_png, grey):
    root = tmp_path / "seg"
    for stem in ("a", "b", "c"):
        save_png(root / "images" / f"{stem}.png", grey(8, 8))
    save_png(root / "masks" / "a.png", grey(8, 8, 0))
    save_png(root / "masks" / "b.png", grey(9, 8, 0))  # wrong size
    task = make_task(
        type="segmentation",
        format="mask-folder",
        path=root,
        classes=("x",),
        skip_bad_samples=True,
    )
    with pytest.warns(UserWarning, match="skipped 2 bad samples"):
        data = load_task_data(task)
    reasons = dict(data.skipped)
    assert "no mask" in reasons[str(root / "images" / "c.png")]
    assert "mask is 8x9" in reasons[str(root / "masks" / "b.png")]
    assert sum(len(v) for v in data.splits.values()) == 1
