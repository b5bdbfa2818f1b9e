"""Semantic segmentation: pixel embedding -> per-pixel logits; soft Dice + focal / ln C."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.segmentation import DiceScore, MeanIoU

from umedpt.config import TaskConfig
from umedpt.data.samples import Sample
from umedpt.models.blocks import PixelDecoder
from umedpt.models.heads import SegmentationHead
from umedpt.models.presets import ModelConfig
from umedpt.tasks.base import (
    TASK_TYPES,
    Batch,
    TaskMetrics,
    TaskType,
    log_num_classes,
    normalize_images,
)


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes (background excluded)."""
    probs = logits.softmax(dim=1)  # (B, K, H, W)
    one_hot = F.one_hot(masks, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
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
    name = "segmentation"
    primary_metric = "dice"

    def build_block(self, in_channels: list[int], config: ModelConfig) -> nn.Module:
        return PixelDecoder(in_channels, config.decoder_channels, config.pixel_dim)

    def build_head(self, task: TaskConfig, config: ModelConfig) -> nn.Module:
        return SegmentationHead(config.pixel_dim, len(task.classes) + 1)

    def collate(self, samples: list[Sample]) -> Batch:
        images = normalize_images(torch.stack([s.image for s in samples]))
        masks = torch.stack([s.mask for s in samples]).long()
        return Batch(images, {"masks": masks})

    def loss(self, outputs: torch.Tensor, batch: Batch, task: TaskConfig) -> torch.Tensor:
        logits, masks = outputs.float(), batch.targets["masks"]
        focal = multiclass_focal_loss(logits, masks) / log_num_classes(len(task.classes) + 1)
        return soft_dice_loss(logits, masks) + focal

    def metrics(self, task: TaskConfig) -> TaskMetrics:
        return SegmentationMetrics(len(task.classes) + 1)


TASK_TYPES.register(Segmentation.name, Segmentation())
