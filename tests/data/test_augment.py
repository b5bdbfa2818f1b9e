"""Training augmentation: masks and boxes stay aligned, dtypes survive, the config parses."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from tests.helpers import make_task, synthetic_samples
from umedpt.config import load_site_config
from umedpt.data import augment_config
from umedpt.data.augment import augment_with_boxes, build_transform
from umedpt.data.augment_config import (
    AUGMENT_POLICIES,
    DEFAULT_AUGMENT,
    AugmentConfig,
    AugmentFieldError,
    task_with_augment,
    with_augment,
)
from umedpt.data.samples import Sample
from umedpt.errors import ConfigError
from umedpt.tasks import TASK_TYPES, get_task_type

SIZE = 64
Y0, Y1, X0, X1 = 10, 30, 6, 26  # an off-centre bright square: every flip moves it

# Each geometric transform on its own (always on, so it must move the square), each colour
# change on its own, and the default policy.
POLICIES = {
    "hflip": AugmentConfig(hflip=1.0),
    "vflip": AugmentConfig(vflip=1.0),
    "rotate": AugmentConfig(rotate=30.0),
    "scale": AugmentConfig(scale=(0.5, 0.7)),
    "colour": AugmentConfig(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05),
    "default": AUGMENT_POLICIES["default"],
}
GEOMETRIC = {"hflip", "vflip", "rotate", "scale", "default"}


def square_sample(targets: dict) -> Sample:
    image = torch.zeros(3, SIZE, SIZE, dtype=torch.uint8)
    image[:, Y0:Y1, X0:X1] = 255
    return Sample(image, "square", targets)


def bright(image: torch.Tensor) -> torch.Tensor:
    return image.float().mean(0) > 127  # (S, S) bool


def bright_box(image: torch.Tensor) -> torch.Tensor:
    ys, xs = bright(image).nonzero(as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    inter = (a & b).sum().item()
    return inter / max(1, (a | b).sum().item())


def box_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    from torchvision.ops import box_iou as tv_box_iou

    return float(tv_box_iou(a[None], b[None])[0, 0])


def draws(seeds: int = 6):
    """Several global-RNG seeds: the transforms draw from torch's global generator."""
    for seed in range(seeds):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield seed


@pytest.mark.parametrize("policy", POLICIES)
def test_a_mask_moves_with_the_image(policy: str) -> None:
    task_type = get_task_type("segmentation")
    transform = build_transform(POLICIES[policy], SIZE)
    original = square_sample({"mask": bright(square_sample({}).image).to(torch.uint8)})
    moved_once = False
    for _ in draws():
        out = task_type.augment(original, transform)
        mask = out.targets["mask"]
        assert mask.dtype == torch.uint8 and mask.shape == (SIZE, SIZE)
        assert set(mask.unique().tolist()) <= {0, 1}  # still a class map
        # Flips and colour are exact; resampling (crop, rotation) blurs the square's edge.
        exact = policy in ("hflip", "vflip", "colour")
        assert iou(mask.bool(), bright(out.image)) >= (1.0 if exact else 0.85)
        moved_once |= not torch.equal(mask, original.targets["mask"])
    assert moved_once == (policy in GEOMETRIC)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_box_still_bounds_its_object(policy: str) -> None:
    task_type = get_task_type("detection")
    transform = build_transform(POLICIES[policy], SIZE)
    box = torch.tensor([[X0, Y0, X1, Y1]], dtype=torch.float32)
    original = square_sample({"boxes": box, "box_labels": torch.tensor([0])})
    for _ in draws():
        out = task_type.augment(original, transform)
        boxes, labels = out.targets["boxes"], out.targets["box_labels"]
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
        assert boxes.shape == (1, 4) and labels.tolist() == [0]
        (moved,) = boxes
        tight = bright_box(out.image)
        # The box bounds every bright pixel (to a pixel of resampling blur) ...
        assert (moved[:2] <= tight[:2] + 1).all() and (moved[2:] >= tight[2:] - 1).all()
        # ... and no more than that: a rotated box's box is wider (~1.4x the side at 30 deg).
        assert box_iou(moved, tight) >= (0.5 if policy in ("rotate", "default") else 0.85)
        if policy in ("hflip", "vflip"):
            assert not torch.equal(moved, box[0])


def test_boxes_are_clipped_and_vanished_ones_dropped_with_their_labels() -> None:
    boxes = torch.tensor(
        [[-5.0, 10, 20, 30], [70, 10, 90, 30], [10, 10, 10.5, 30], [40, 40, 50, 50]]
    )
    sample = square_sample({"boxes": boxes, "box_labels": torch.tensor([1, 2, 3, 4])})

    def identity(image, boxes):  # what a transform returns: boxes may leave the image
        return image, boxes

    out = augment_with_boxes(sample, identity, "boxes", "box_labels")
    assert out.targets["boxes"].tolist() == [[0, 10, 20, 30], [40, 40, 50, 50]]
    assert out.targets["box_labels"].tolist() == [1, 4]


def test_boxes_cropped_out_are_dropped() -> None:
    """A small crop away from a corner box: the box leaves the image, its label goes too."""
    transform = build_transform(AugmentConfig(scale=(0.05, 0.05)), SIZE)
    boxes = torch.tensor([[0.0, 0, 4, 4], [0, 0, 64, 64]])
    sample = square_sample({"boxes": boxes, "box_labels": torch.tensor([7, 8])})
    kept = []
    for _ in draws(10):
        out = get_task_type("detection").augment(sample, transform)
        assert len(out.targets["boxes"]) == len(out.targets["box_labels"])
        assert ((out.targets["boxes"] >= 0) & (out.targets["boxes"] <= SIZE)).all()
        kept.append(out.targets["box_labels"].tolist())
    assert [8] in kept and all(8 in k for k in kept)  # the whole-image box always stays


@pytest.mark.parametrize("kind", TASK_TYPES.names())
def test_every_type_keeps_dtypes_shapes_and_the_cached_sample(kind: str) -> None:
    """Including types that rely on the base default (image-level targets)."""
    task_type = get_task_type(kind)
    samples = synthetic_samples(kind, 4, torch.Generator().manual_seed(0))
    before = [(s.image.clone(), {k: _clone(v) for k, v in s.targets.items()}) for s in samples]
    transform = build_transform(AUGMENT_POLICIES["default"], SIZE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        out = [task_type.augment(s, transform) for s in samples]
    for (image, targets), sample, augmented in zip(before, samples, out, strict=True):
        assert torch.equal(sample.image, image)  # the cached sample is untouched
        assert augmented.image.dtype == torch.uint8 and augmented.image.shape == image.shape
        assert type(augmented.image) is torch.Tensor  # not a tv_tensor subclass
        assert augmented.targets.keys() == targets.keys()
        for key, value in augmented.targets.items():
            if isinstance(value, torch.Tensor):
                assert type(value) is torch.Tensor and value.dtype == targets[key].dtype
                if key not in ("boxes", "box_labels"):  # boxes may be dropped
                    assert value.shape == targets[key].shape
    assert any(not torch.equal(a.image, s.image) for a, s in zip(out, samples))
    task_type.collate(out)  # still a valid batch


def _clone(value):
    return value.clone() if isinstance(value, torch.Tensor) else value


def test_the_image_level_default_leaves_targets_alone() -> None:
    task_type = get_task_type("classification")
    sample = square_sample({"label": 1})
    out = task_type.augment(sample, build_transform(AugmentConfig(hflip=1.0), SIZE))
    assert out.targets == {"label": 1}
    assert torch.equal(out.image, sample.image.flip(-1))


# -- configuration ----------------------------------------------------------------------
def _site(tmp_path, augment_line: str | None):
    line = "" if augment_line is None else f"augment = {augment_line}\n"
    path = tmp_path / "site-a.toml"
    path.write_text(
        '[[tasks]]\nname = "t"\ntype = "segmentation"\nformat = "mask-folder"\npath = "d"\n'
        f'classes = ["a"]\n{line}'
    )
    return path


def test_an_absent_field_gives_the_default_constant(tmp_path, monkeypatch) -> None:
    task = load_site_config(_site(tmp_path, None)).tasks[0]
    assert task.augment == AUGMENT_POLICIES[DEFAULT_AUGMENT]
    monkeypatch.setattr(augment_config, "DEFAULT_AUGMENT", "default")  # the one-line flip
    assert load_site_config(_site(tmp_path, None)).tasks[0].augment == AUGMENT_POLICIES["default"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('"none"', AugmentConfig()),
        ('"default"', AUGMENT_POLICIES["default"]),
        ("{hflip = 0.5, scale = [0.8, 1]}", AugmentConfig(hflip=0.5, scale=(0.8, 1.0))),
        (
            '{base = "default", rotate = 0, vflip = 0.25}',
            AugmentConfig(vflip=0.25, scale=(0.8, 1.0), brightness=0.2, contrast=0.2),
        ),
    ],
)
def test_the_site_file_sets_the_policy(tmp_path, line: str, expected: AugmentConfig) -> None:
    assert load_site_config(_site(tmp_path, line)).tasks[0].augment == expected


@pytest.mark.parametrize(
    ("line", "field", "words"),
    [
        ('"strong"', "tasks[0].augment", "none, default"),
        ("3", "tasks[0].augment", "policy name or a table"),
        ("{hflip = 1.5}", "tasks[0].augment.hflip", "probability"),
        ("{vflip = true}", "tasks[0].augment.vflip", "number"),
        ("{rotate = -1}", "tasks[0].augment.rotate", "degrees"),
        ("{scale = [0.9, 0.8]}", "tasks[0].augment.scale", "lo <= hi"),
        ("{scale = [0.5]}", "tasks[0].augment.scale", "two numbers"),
        ("{scale = [0, 1]}", "tasks[0].augment.scale", "0 < lo"),
        ("{brightness = -0.1}", "tasks[0].augment.brightness", ">= 0"),
        ("{hue = 0.7}", "tasks[0].augment.hue", "[0, 0.5]"),
        ("{hflp = 0.5}", "tasks[0].augment.hflp", "unknown field"),
        ('{base = "heavy"}', "tasks[0].augment.base", "none, default"),
    ],
)
def test_bad_values_name_the_field(tmp_path, line: str, field: str, words: str) -> None:
    path = _site(tmp_path, line)
    with pytest.raises(ConfigError) as info:
        load_site_config(path)
    assert info.value.field == field and words in info.value.problem
    assert str(path) in str(info.value)


def test_a_config_built_in_code_is_validated_too() -> None:
    with pytest.raises(AugmentFieldError, match="augment.rotate"):
        AugmentConfig(rotate=200)
    assert AugmentConfig(scale=[1, 1]).is_identity  # a list is normalised to a tuple
    assert not AUGMENT_POLICIES["default"].is_identity


def test_with_augment_turns_it_on_for_every_task(tmp_path) -> None:
    site = load_site_config(_site(tmp_path, '"none"'))
    on = with_augment(site, "default")
    assert [t.augment for t in on.tasks] == [AUGMENT_POLICIES["default"]]
    assert on.tasks[0].name == site.tasks[0].name and site.tasks[0].augment.is_identity
    custom = AugmentConfig(hflip=0.5)
    assert task_with_augment(make_task("x", "classification"), custom).augment == custom
    with pytest.raises(ValueError, match="unknown augment policy"):
        with_augment(site, "heavy")


def test_tv_tensor_inputs_are_what_the_helpers_hand_to_transforms() -> None:
    """A transform sees tv_tensors, so v2 knows which input is a mask or boxes."""
    seen = []

    def spy(*inputs):
        seen.extend(type(i) for i in inputs)
        return inputs

    get_task_type("segmentation").augment(square_sample({"mask": torch.zeros(SIZE, SIZE)}), spy)
    boxes = {"boxes": torch.zeros(0, 4), "box_labels": torch.zeros(0, dtype=torch.long)}
    get_task_type("detection").augment(square_sample(boxes), spy)
    assert seen == [tv_tensors.Image, tv_tensors.Mask, tv_tensors.Image, tv_tensors.BoundingBoxes]
