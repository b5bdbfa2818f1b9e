"""Semantic segmentation: pixel embedding -> per-pixel logits; soft Dice + focal / ln C."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.segmentation import DiceScore, MeanIoU

from umedpt.config import TaskConfig
from umedpt.data.augment import Transform, augment_with_mask
from umedpt.data.images import resize_mask
from umedpt.data.kinds import Stacked
from umedpt.data.samples import Record, Sample, TaskData
from umedpt.data.stats import describe
from umedpt.data.targets import LoadContext, check_mask
from umedpt.errors import DataError
from umedpt.models.blocks import PixelDecoder
from umedpt.models.heads import SegmentationHead
from umedpt.models.presets import ModelConfig
from umedpt.tasks.base import (
    Batch,
    LossComponents,
    TaskMetrics,
    TaskType,
    log_num_classes,
    noise_image,
    register_task_type,
    stack_images,
)


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes (background excluded)."""
    probs = logits.softmax(dim=1)  # (B, K, H, W)
    # A comparison, not F.one_hot: torch.func.vmap (per-sample gradients under DP) refuses
    # one_hot's data-dependent output.
    classes = torch.arange(probs.shape[1], device=masks.device).view(1, -1, 1, 1)
    one_hot = (masks.unsqueeze(1) == classes).to(probs.dtype)  # (B, K, H, W)
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    total = probs.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + eps) / (total + eps)
    return 1 - dice[1:].mean()


def multiclass_focal_loss(
    logits: torch.Tensor, masks: torch.Tensor, gamma: float = 2.0
) -> torch.Tensor:
    """Focal loss on the softmax (torchvision's focal loss is sigmoid-only)."""
    log_probs = F.log_softmax(logits, dim=1)
    log_pt = log_probs.gather(1, masks.unsqueeze(1)).squeeze(1)
    return (-((1 - log_pt.exp()) ** gamma) * log_pt).mean()


class SegmentationMetrics(TaskMetrics):
    def __init__(self, num_classes_with_background: int) -> None:
        kwargs = dict(
            num_classes=num_classes_with_background, include_background=False, input_format="index"
        )
        self.dice = DiceScore(average="macro", **kwargs)
        self.iou = MeanIoU(**kwargs)

    def update(self, outputs: torch.Tensor, batch: Batch) -> None:
        predicted = outputs.detach().argmax(dim=1).cpu()
        masks = batch.targets["masks"].cpu()
        self.dice.update(predicted, masks)
        self.iou.update(predicted, masks)

    def compute(self) -> dict[str, float]:
        return {"dice": float(self.dice.compute()), "iou": float(self.iou.compute())}


class Segmentation(TaskType):
    """A class per pixel; loss components ``dice`` and ``focal``.

    Record target ``mask``: the ImageRef of a class map of the image's size, 0 for background
    and ``1..len(classes)`` for the classes. Sample target ``mask``: it, resized, uint8 (S, S).
    """

    name = "segmentation"
    primary_metric = "dice"
    target_fields = {"mask": Stacked()}
    synthetic_classes = ("square",)

    def __init__(self, *, focal_gamma: float = 2.0) -> None:
        self.focal_gamma = focal_gamma

    def load_targets(self, record: Record, sample: Sample, context: LoadContext) -> None:
        ref = record.targets.get("mask")
        if ref is None:
            raise DataError(sample.source, "no mask for this image")
        mask = check_mask(
            context.source.read_mask(ref),
            sample.original_size,
            len(context.task.classes),
            where=str(ref),
            image=str(record.image),
        )
        resized = resize_mask(mask, context.task.image_size).copy()
        sample.targets["mask"] = torch.from_numpy(resized)

    def augment(self, sample: Sample, transform: Transform) -> Sample:
        """The mask moves with the image (nearest, so it stays a class map)."""
        return augment_with_mask(sample, transform, "mask")

    def collate(self, samples: list[Sample]) -> Batch:
        masks = torch.stack([s.targets["mask"] for s in samples]).long()
        return Batch(stack_images(samples), {"masks": masks})

    def synthetic_samples(
        self, n: int, generator: torch.Generator, *, image_size: int = 64
    ) -> list[Sample]:
        """Noise with one bright square at a random place; the mask is the square."""
        samples = []
        side = image_size * 5 // 16
        for i in range(n):
            image = noise_image(image_size, generator)
            mask = torch.zeros(image_size, image_size, dtype=torch.uint8)
            y, x = torch.randint(0, image_size - side, (2,), generator=generator).tolist()
            image[:, y : y + side, x : x + side] += 120
            mask[y : y + side, x : x + side] = 1
            samples.append(Sample(image, f"{self.name}-{i}", {"mask": mask}))
        return samples

    def summarize(self, task: TaskConfig, data: TaskData) -> dict[str, Any]:
        fractions = [
            float((s.targets["mask"] > 0).float().mean())
            for samples in data.splits.values()
            for s in samples
            if "mask" in s.targets
        ]
        return {"mask_foreground_fraction": describe(fractions)}

    def draw(self, ax: Any, sample: Sample, task: TaskConfig) -> None:
        if "mask" not in sample.targets:
            return
        mask = sample.targets["mask"].numpy().astype(np.float32)
        overlay = np.ma.masked_where(mask == 0, mask)
        ax.imshow(overlay, cmap="autumn", alpha=0.45, vmin=0, vmax=max(1, len(task.classes)))

    def stratum(self, sample: Sample) -> Hashable:
        if "mask" not in sample.targets:
            return super().stratum(sample)
        return ("mask", tuple(int(c) for c in sample.targets["mask"].unique() if c))

    def build_block(self, in_channels: list[int], config: ModelConfig) -> nn.Module:
        return PixelDecoder(in_channels, config.decoder_channels, config.pixel_dim)

    def build_head(self, task: TaskConfig, config: ModelConfig) -> nn.Module:
        return SegmentationHead(config.pixel_dim, len(task.classes) + 1)

    def loss(self, outputs: torch.Tensor, batch: Batch, task: TaskConfig) -> LossComponents:
        logits, masks = outputs.float(), batch.targets["masks"]
        focal = multiclass_focal_loss(logits, masks, self.focal_gamma)
        return {
            "dice": soft_dice_loss(logits, masks),
            "focal": focal / log_num_classes(len(task.classes) + 1),
        }

    def metrics(self, task: TaskConfig) -> TaskMetrics:
        return SegmentationMetrics(len(task.classes) + 1)


register_task_type(Segmentation())
