"""Training augmentation: an :class:`AugmentConfig` as torchvision v2 transforms, seeded.

Applied to decoded samples (after the data cache) by the training streams only; evaluation
collates samples as they are. Each task type decides what moves with the image
(:meth:`umedpt.tasks.base.TaskType.augment`), using the helpers here: the image alone
(labels), the image and a class map (:func:`augment_with_mask`), or the image and its boxes
(:func:`augment_with_boxes`, which clips boxes and drops the ones that vanish).

v2 transforms draw their random parameters from torch's global RNG. :class:`Augmenter` draws
one seed per batch from the stream's own generator and runs the batch's transforms under
``torch.random.fork_rng`` seeded with it, so the stream's saved state replays the same
augmented batches after a resume, and the global RNG (dropout, stochastic depth) is untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torchvision import tv_tensors
from torchvision.ops import clip_boxes_to_image
from torchvision.transforms import v2

from umedpt.data.augment_config import AugmentConfig
from umedpt.data.samples import Sample

Transform = Callable[..., object]  # a v2 transform: tv_tensors in, the same tv_tensors out
# How a task type augments one sample (its ``augment`` method).
AugmentSample = Callable[[Sample, Transform], Sample]

MIN_BOX_SIZE = 1.0  # pixels: a box narrower or lower than this after augmentation is dropped


def build_transform(config: AugmentConfig, size: int) -> v2.Compose:
    """The v2 pipeline of ``config`` for square images of side ``size``; identity parts left out."""
    parts: list[v2.Transform] = []
    if config.scale != (1.0, 1.0):
        parts.append(v2.RandomResizedCrop(size, scale=config.scale, ratio=(1.0, 1.0)))
    if config.hflip:
        parts.append(v2.RandomHorizontalFlip(config.hflip))
    if config.vflip:
        parts.append(v2.RandomVerticalFlip(config.vflip))
    if config.rotate:
        # Bilinear for the image; v2 always moves a Mask with nearest, so it stays a class
        # map. Corners rotated in are 0: black in the image, background in a mask.
        parts.append(v2.RandomRotation(config.rotate, interpolation=v2.InterpolationMode.BILINEAR))
    jitter = (config.brightness, config.contrast, config.saturation, config.hue)
    if any(jitter):
        parts.append(v2.ColorJitter(*jitter))
    return v2.Compose(parts)


def augment_image(sample: Sample, transform: Transform) -> Sample:
    """``sample`` with its image transformed and its targets as they were (image-level labels)."""
    image = transform(tv_tensors.Image(sample.image))
    return replace(sample, image=image.as_subclass(torch.Tensor))


def augment_with_mask(sample: Sample, transform: Transform, key: str) -> Sample:
    """``sample`` with its image and its class map ``targets[key]`` moved together."""
    if key not in sample.targets:
        return augment_image(sample, transform)
    image, mask = transform(tv_tensors.Image(sample.image), tv_tensors.Mask(sample.targets[key]))
    targets = {**sample.targets, key: mask.as_subclass(torch.Tensor)}
    return replace(sample, image=image.as_subclass(torch.Tensor), targets=targets)


def augment_with_boxes(sample: Sample, transform: Transform, boxes: str, labels: str) -> Sample:
    """``sample`` with its image and xyxy pixel boxes ``targets[boxes]`` moved together.

    Boxes are clipped to the image; a box left under :data:`MIN_BOX_SIZE` wide or high (cropped
    or rotated out) is dropped with its label ``targets[labels]``.
    """
    if boxes not in sample.targets:
        return augment_image(sample, transform)
    size = tuple(sample.image.shape[-2:])
    image, moved = transform(
        tv_tensors.Image(sample.image),
        tv_tensors.BoundingBoxes(sample.targets[boxes], format="XYXY", canvas_size=size),
    )
    moved = clip_boxes_to_image(moved.as_subclass(torch.Tensor), size)
    keep = ((moved[:, 2] - moved[:, 0]) >= MIN_BOX_SIZE) & (
        (moved[:, 3] - moved[:, 1]) >= MIN_BOX_SIZE
    )
    dtype = sample.targets[boxes].dtype
    targets = {**sample.targets, boxes: moved[keep].to(dtype)}
    if labels in sample.targets:
        targets[labels] = sample.targets[labels][keep]
    return replace(sample, image=image.as_subclass(torch.Tensor), targets=targets)


class Augmenter:
    """Augments a training batch's samples with one task's policy, seeded by the stream.

    ``apply`` is the task type's :meth:`~umedpt.tasks.base.TaskType.augment`. The samples
    are new objects: the cached ones are never changed.
    """

    def __init__(self, config: AugmentConfig, apply: AugmentSample) -> None:
        self.config = config
        self.apply = apply
        self._transforms: dict[int, v2.Compose] = {}  # by image side

    def __call__(self, samples: list[Sample], generator: torch.Generator) -> list[Sample]:
        # One draw from the stream's generator per batch: its state then covers augmentation.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only (torch.manual_seed would reseed CUDA's too).
            torch.default_generator.manual_seed(seed)
            return [self.apply(s, self._transform(int(s.image.shape[-1]))) for s in samples]

    def _transform(self, size: int) -> v2.Compose:
        if size not in self._transforms:
            self._transforms[size] = build_transform(self.config, size)
        return self._transforms[size]


def make_augmenter(config: AugmentConfig, apply: AugmentSample) -> Augmenter | None:
    """An :class:`Augmenter`, or None for a policy that changes nothing (no RNG draws at all)."""
    return None if config.is_identity else Augmenter(config, apply)
