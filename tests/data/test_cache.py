"""The decoded-data cache: a cached load equals a fresh one, and any change invalidates it."""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.helpers import make_task as memory_task
from tests.helpers import synthetic_samples
from umedpt.config import SplitConfig
from umedpt.data.cache import SUFFIX, CachedData, TaskCache
from umedpt.data.loading import load_task, load_task_data
from umedpt.data.samples import TaskData
from umedpt.data.targets import Dropped
from umedpt.tasks import TASK_TYPES


def assert_same_value(u: Any, v: Any, name: str) -> None:
    assert type(u) is type(v), name
    if isinstance(u, torch.Tensor):
        assert u.dtype == v.dtype and u.shape == v.shape, name
        assert torch.equal(u, v), name
    else:
        assert u == v, name


def assert_same(a: TaskData, b: TaskData) -> None:
    assert list(a.splits) == list(b.splits)
    for split in a.splits:
        assert len(a[split]) == len(b[split])
        for x, y in zip(a[split], b[split], strict=True):
            assert (x.source, x.original_size) == (y.source, y.original_size)
            assert_same_value(x.image, y.image, "image")
            assert sorted(x.targets) == sorted(y.targets)
            for name in x.targets:
                assert_same_value(x.targets[name], y.targets[name], name)
    assert a.skipped == b.skipped


def cache_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- one small task of every type ------------------------------------------------------


def classification(tmp_path, make_task, save_png, grey, **kw):
    for i in range(6):
        save_png(tmp_path / "cls" / ("a" if i % 2 else "b") / f"{i}.png", grey(20 + i, 24, 10 * i))
    return make_task(type="classification", format="class-folders", path=tmp_path / "cls",
                     classes=("a", "b"), **kw)  # fmt: skip


def segmentation(tmp_path, make_task, save_png, grey, **kw):
    for i in range(5):
        save_png(tmp_path / "seg" / "images" / f"{i}.png", grey(30, 20 + i, 50))
        mask = np.zeros((30, 20 + i), dtype=np.uint8)
        mask[5:15, 3:9] = 255
        save_png(tmp_path / "seg" / "masks" / f"{i}.png", mask)
    return make_task(type="segmentation", format="mask-folder", path=tmp_path / "seg",
                     classes=("organ",), **kw)  # fmt: skip


def detection(tmp_path, make_task, write_voc, **kw):
    items = {
        f"img{i}": ((40, 50), [("cell", (2.0, 3.0, 20.0 + i, 30.0))] * (i % 3)) for i in range(6)
    }
    items["img0"] = ((40, 50), [("cell", (5.0, 5.0, 5.0, 9.0))])  # zero width: dropped
    root = write_voc(tmp_path / "voc", items)
    return make_task(type="detection", format="voc", path=root, classes=("cell",), **kw)


def multilabel(tmp_path, make_task, **kw):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 3))
    np.savez(tmp_path / "chest.npz", **arrays)
    return make_task(type="multilabel", format="npz", path=tmp_path / "chest.npz",
                     classes=("effusion", "mass", "nodule"), **kw)  # fmt: skip


@pytest.fixture(params=["classification", "segmentation", "detection", "multilabel"])
def any_task(request, tmp_path, make_task, save_png, grey, write_voc):
    if request.param == "classification":
        return classification(tmp_path, make_task, save_png, grey)
    if request.param == "segmentation":
        return segmentation(tmp_path, make_task, save_png, grey)
    if request.param == "detection":
        return detection(tmp_path, make_task, write_voc)
    return multilabel(tmp_path, make_task)


def test_a_cached_load_equals_a_fresh_one(any_task, tmp_path) -> None:
    cache = tmp_path / "state" / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the detection task drops a box, on purpose
        fresh = load_task_data(any_task)
        first = load_task(any_task, cache_dir=cache)
        second = load_task(any_task, cache_dir=cache)
    assert not first.from_cache and second.from_cache
    assert first.cache_file == second.cache_file
    assert cache_files(cache) == [first.cache_file.name]
    assert first.cache_file.name.startswith(f"{any_task.name}.")
    assert_same(fresh, first.data)
    assert_same(fresh, second.data)


@pytest.mark.parametrize("task_type", TASK_TYPES.names())
def test_every_task_types_targets_survive_the_cache(task_type, tmp_path) -> None:
    """Stored by the kinds the type declares: a new type (or kind) needs nothing in the cache."""
    generator = torch.Generator().manual_seed(0)
    splits = {
        "train": synthetic_samples(task_type, 5, generator),
        "val": [],  # an empty split stores no tensors
        "test": synthetic_samples(task_type, 2, generator),
    }
    data = TaskData(splits, skipped=[("gone.png", "unreadable")])
    cache = TaskCache(tmp_path, memory_task("t", task_type), "0123abcd")
    assert cache.write(CachedData(data, Dropped()))
    again = cache.read()
    assert again is not None
    assert_same(data, again.data)


def test_a_target_its_type_does_not_declare_is_not_cached(tmp_path, caplog) -> None:
    samples = synthetic_samples("classification", 2, torch.Generator().manual_seed(0))
    samples[1].targets["mask"] = torch.zeros(4, 4)
    cache = TaskCache(tmp_path, memory_task("t", "classification"), "0123abcd")
    assert not cache.write(CachedData(TaskData({"train": samples}), Dropped()))
    assert "does not declare" in caplog.text and cache.read() is None


def test_the_same_warnings_come_from_the_cache(tmp_path, make_task, save_png, grey, write_voc):
    task = detection(tmp_path, make_task, write_voc)
    cache = tmp_path / "cache"
    for expected_from_cache in (False, True):
        with pytest.warns(UserWarning, match="dropped 1 zero-width/height boxes from 1 images"):
            assert load_task(task, cache_dir=cache).from_cache is expected_from_cache


def test_skipped_samples_are_kept_in_the_cache(tmp_path, make_task, save_png, grey) -> None:
    task = segmentation(tmp_path, make_task, save_png, grey, skip_bad_samples=True)
    (tmp_path / "seg" / "masks" / "3.png").unlink()  # image 3 has no mask now
    (tmp_path / "seg" / "images" / "4.png").write_bytes(b"not a png")
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="skipped 2 bad samples") as fresh_warnings:
        first = load_task(task, cache_dir=cache)
    with pytest.warns(UserWarning, match="skipped 2 bad samples") as cached_warnings:
        second = load_task(task, cache_dir=cache)
    assert second.from_cache
    assert len(second.data.skipped) == 2
    assert_same(first.data, second.data)
    assert [str(w.message) for w in fresh_warnings] == [str(w.message) for w in cached_warnings]


def test_a_changed_data_file_invalidates_the_cache(tmp_path, make_task, save_png, grey) -> None:
    task = classification(tmp_path, make_task, save_png, grey)
    cache = tmp_path / "cache"
    old = load_task(task, cache_dir=cache)
    image = tmp_path / "cls" / "a" / "1.png"
    save_png(image, grey(21, 24, 200))  # new pixels
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    new = load_task(task, cache_dir=cache)
    assert not new.from_cache and new.cache_file != old.cache_file
    assert cache_files(cache) == [new.cache_file.name]  # the stale file is gone
    changed = next(s for s in new.data["train"] + new.data["val"] + new.data["test"]
                   if s.source == str(image))  # fmt: skip
    assert int(changed.image.float().mean()) == 200
    assert load_task(task, cache_dir=cache).from_cache


def test_an_added_image_or_another_setting_invalidates_the_cache(
    tmp_path, make_task, save_png, grey
) -> None:
    task = classification(tmp_path, make_task, save_png, grey)
    cache = tmp_path / "cache"
    keys = {load_task(task, cache_dir=cache).cache_file}
    save_png(tmp_path / "cls" / "a" / "9.png", grey(20, 20))
    keys.add(load_task(task, cache_dir=cache).cache_file)
    for other in (
        classification(tmp_path, make_task, save_png, grey, image_size=64),
        classification(tmp_path, make_task, save_png, grey, split=SplitConfig(seed=3)),
    ):
        loaded = load_task(other, cache_dir=cache)
        assert not loaded.from_cache
        keys.add(loaded.cache_file)
    assert len(keys) == 4
    assert len(cache_files(cache)) == 1


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_cache_is_discarded_with_a_warning(
    damage, tmp_path, make_task, save_png, grey
) -> None:
    task = segmentation(tmp_path, make_task, save_png, grey)
    cache = tmp_path / "cache"
    first = load_task(task, cache_dir=cache)
    file = first.cache_file
    content = file.read_bytes()
    file.write_bytes(content[: len(content) // 2] if damage == "truncate" else b"\x07" * 64)
    with pytest.warns(UserWarning, match=f"data cache {file} is unreadable"):
        again = load_task(task, cache_dir=cache)
    assert not again.from_cache
    assert_same(first.data, again.data)
    assert load_task(task, cache_dir=cache).from_cache  # written anew


def test_concurrent_writers_leave_a_readable_file(tmp_path, make_task, save_png, grey) -> None:
    task = classification(tmp_path, make_task, save_png, grey)
    cache = tmp_path / "cache"
    loaded = load_task(task, cache_dir=cache)
    key = loaded.cache_file.name.split(".")[1]
    reference = TaskCache(cache, task, key).read()
    assert reference is not None
    start = threading.Barrier(4)

    def write() -> None:
        start.wait()
        for _ in range(3):
            assert TaskCache(cache, task, key).write(reference)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache_files(cache) == [loaded.cache_file.name]  # no temp files left
    again = TaskCache(cache, task, key).read()
    assert again is not None
    assert_same(loaded.data, again.data)


def test_the_cache_of_another_task_is_left_alone(tmp_path, make_task, save_png, grey) -> None:
    cache = tmp_path / "cache"
    task = classification(tmp_path, make_task, save_png, grey)
    other = (cache / f"{task.name}-2.0123abcd{SUFFIX}", cache / f"other.0123abcd{SUFFIX}")
    cache.mkdir()
    for path in other:
        path.write_bytes(b"x")
    loaded = load_task(task, cache_dir=cache)
    assert cache_files(cache) == sorted([loaded.cache_file.name, *(p.name for p in other)])


def test_progress_reaches_the_total_both_ways(tmp_path, make_task, save_png, grey) -> None:
    task = classification(tmp_path, make_task, save_png, grey)
    calls: list[tuple[int, int]] = []
    for _ in range(2):
        calls.clear()
        load_task(task, cache_dir=tmp_path / "cache", on_progress=lambda d, t: calls.append((d, t)))
        assert calls[-1] == (6, 6)
        assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_a_cache_that_cannot_be_written_costs_only_speed(
    tmp_path, make_task, save_png, grey, caplog
) -> None:
    task = classification(tmp_path, make_task, save_png, grey)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    loaded = load_task(task, cache_dir=blocked / "cache")
    assert not loaded.from_cache and loaded.cache_file is None
    assert_same(load_task_data(task), loaded.data)
    assert "could not write the data cache" in caplog.text


def test_check_site_fills_the_sites_cache_and_says_so_next_time(tmp_path) -> None:
    import typer
    from typer.testing import CliRunner

    from umedpt.config import load_site_config
    from umedpt.data.cache import site_cache_dir
    from umedpt.data.demo import write_demo_federation
    from umedpt_fl.commands.check_site import check_site_command

    app = typer.Typer()
    app.command()(check_site_command)
    site_file = write_demo_federation(tmp_path, images_per_site=30)[1]
    outputs = []
    for flags in ([], [], ["--no-cache"]):
        result = CliRunner().invoke(app, [str(site_file), *flags])
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    assert "loaded 22 train, 4 val, 4 test samples in" in outputs[0]
    assert "read from the cache 22 train, 4 val, 4 test samples in" in outputs[1]
    assert "loaded 22 train" in outputs[2]
    assert len(list(site_cache_dir(load_site_config(site_file)).iterdir())) == 1
