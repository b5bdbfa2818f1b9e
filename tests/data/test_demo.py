"""The demo federation: deterministic, all task types, loadable, and learnable by simple rules."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from umedpt.config import load_site_config
from umedpt.data.demo import write_demo_federation
from umedpt.data.loading import load_task_data


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("demo")
    return root, write_demo_federation(root, seed=0, images_per_site=60)


@pytest.fixture(scope="module")
def loaded(demo):
    _, tomls = demo
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # demo data must load without any warning
        for toml in tomls:
            site = load_site_config(toml)
            out[site.name] = (site, load_task_data(site.tasks[0]))
    return out


def test_same_seed_same_bytes(tmp_path, demo):
    root, _ = demo
    again = tmp_path / "again"
    write_demo_federation(again, seed=0, images_per_site=60)
    assert _files(again) == _files(root)
    other = tmp_path / "other"
    write_demo_federation(other, seed=1, images_per_site=60)
    assert _files(other).keys() == _files(root).keys()
    assert _files(other) != _files(root)


def test_sites_cover_all_task_types_and_formats(demo, loaded):
    root, tomls = demo
    assert [p.name for p in tomls] == [f"clinic-{c}.toml" for c in "abcde"]
    assert all(p.parent == root for p in tomls)
    kinds = {(site.tasks[0].type, site.tasks[0].format) for site, _ in loaded.values()}
    assert kinds == {
        ("classification", "class-folders"),
        ("segmentation", "mask-folder"),
        ("detection", "voc"),
        ("classification", "npz"),
        ("self-supervised", "folder"),
    }
    for site, data in loaded.values():
        task = site.tasks[0]
        assert task.image_size == 64 and task.batch_size == 16
        assert site.state_dir == root / "state" / site.name
        assert not data.skipped
        assert all(data.splits[s] for s in ("train", "val", "test"))
        # the unlabelled site is a quarter of the others' size (the demo stays fast)
        assert sum(map(len, data.splits.values())) == (15 if site.name == "clinic-e" else 60)
        assert data["train"][0].image.shape == (3, 64, 64)
    text = tomls[0].read_text()
    assert str(root) not in text  # relative paths only


def _foreground(sample) -> np.ndarray:
    grey = sample.image[0].float().numpy()
    low, high = np.percentile(grey, 50), np.percentile(grey, 99.5)
    return grey > (low + high) / 2


def test_lesion_textures_are_separable(loaded):
    """A nearest-centroid rule on two texture features (fill of the bright part, and how
    often neighbouring bright pixels change along rows vs columns) beats chance clearly."""
    site, data = loaded["clinic-a"]

    def features(sample) -> np.ndarray:
        grey = sample.image[0].float().numpy()
        lesion = grey > np.percentile(grey, 60)
        bright = grey > np.percentile(grey[lesion], 50)
        changes = (
            np.abs(np.diff(bright.astype(int), axis=1)).sum()
            + np.abs(np.diff(bright.astype(int), axis=0)).sum()
        )
        return np.array([changes / max(lesion.sum(), 1), bright.sum() / max(lesion.sum(), 1)])

    centroids = np.array(
        [
            np.mean([features(s) for s in data["train"] if s.targets["label"] == c], axis=0)
            for c in range(3)
        ]
    )
    scale = centroids.std(axis=0) + 1e-6
    held_out = data["val"] + data["test"]
    hits = [
        int(np.argmin(np.abs((centroids - features(s)) / scale).sum(axis=1))) == s.targets["label"]
        for s in held_out
    ]
    assert np.mean(hits) > 0.6  # chance is 1/3


def test_blobs_masks_match_bright_regions(loaded):
    _, data = loaded["clinic-b"]
    ious = []
    for sample in data["train"]:
        pred, mask = _foreground(sample), sample.targets["mask"].numpy() > 0
        ious.append((pred & mask).sum() / (pred | mask).sum())
    assert np.mean(ious) > 0.6


def test_spots_boxes_cover_bright_pixels(loaded):
    _, data = loaded["clinic-c"]
    inside, total, empty = 0, 0, 0
    for sample in data["train"]:
        grey = sample.image[0].numpy()
        bright = grey > 150
        covered = np.zeros_like(bright)
        for x0, y0, x1, y1 in sample.targets["boxes"].round().int().tolist():
            covered[y0:y1, x0:x1] = True
        inside += (bright & covered).sum()
        total += bright.sum()
        empty += len(sample.targets["boxes"]) == 0
    assert total > 0 and inside / total > 0.9
    assert empty > 0  # some images have no objects


def test_stripes_orientation_from_gradients(loaded):
    _, data = loaded["clinic-d"]
    hits = []
    for sample in data["val"] + data["test"] + data["train"]:
        grey = sample.image[0].float().numpy()
        vertical_change = np.abs(np.diff(grey, axis=0)).mean()  # horizontal stripes
        horizontal_change = np.abs(np.diff(grey, axis=1)).mean()
        hits.append(int(horizontal_change > vertical_change) == sample.targets["label"])
    assert np.mean(hits) > 0.9


def test_summary_and_preview(tmp_path, loaded):
    from umedpt.data.preview import summarize, write_preview

    for site, data in loaded.values():
        task = site.tasks[0]
        summary = summarize(task, data)
        assert summary["images"] == {k: len(v) for k, v in data.splits.items()}
        assert summary["skipped"] == 0
        out = write_preview(task, data, tmp_path / f"{task.name}.png", n=6)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    seg = summarize(*[(s.tasks[0], d) for s, d in loaded.values() if s.name == "clinic-b"][0])
    assert 0.02 < seg["mask_foreground_fraction"]["mean"] < 0.5
    det = summarize(*[(s.tasks[0], d) for s, d in loaded.values() if s.name == "clinic-c"][0])
    assert det["boxes_per_image"]["images_without_boxes"] > 0
    cls = summarize(*[(s.tasks[0], d) for s, d in loaded.values() if s.name == "clinic-a"][0])
    assert sum(cls["class_counts"]["train"].values()) == len(loaded["clinic-a"][1]["train"])
    ssl = summarize(*[(s.tasks[0], d) for s, d in loaded.values() if s.name == "clinic-e"][0])
    assert ssl["flat_images"] == 0 and ssl["masking"]["patch_pixels"] == 8


def test_unlabelled_scans_sit_at_several_depths_and_the_labelled_bytes_are_unchanged(
    tmp_path, demo
):
    root, tomls = demo
    scans = sorted((root / "clinic-e" / "scans").rglob("*.png"))
    assert len({p.parent for p in scans}) == 2 and len(scans) == 15
    assert "classes" not in tomls[4].read_text()
    without = write_demo_federation(tmp_path / "four", seed=0, images_per_site=60, unlabelled=False)
    assert [p.name for p in without] == [p.name for p in tomls[:4]]
    assert _files(tmp_path / "four") == {
        k: v for k, v in _files(root).items() if not k.startswith(("clinic-e", "state"))
    }
