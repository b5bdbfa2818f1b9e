"""Tiny per-task heads. Each head belongs to one task and never leaves its site."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn


class ClassificationHead(nn.Module):
    """Dropout + linear from the image vector to class logits."""

    def __init__(self, image_dim: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classification head needs >= 2 classes, got {num_classes}")
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(image_dim, num_classes)

    def forward(self, image_vector: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(image_vector))  # (B, C)


class SegmentationHead(nn.Module):
    """3x3 conv from the pixel embedding to per-pixel logits (background + classes)."""

    def __init__(self, pixel_dim: int, num_classes_with_background: int) -> None:
        super().__init__()
        if num_classes_with_background < 2:
            raise ValueError("a segmentation head needs background + at least one class")
        self.conv = nn.Conv2d(pixel_dim, num_classes_with_background, 3, padding=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.conv(pixels)  # (B, C+1, H, W)


class FCOSOutputs(NamedTuple):
    """What the detection head predicts, one map per pyramid level (P3..P7)."""

    cls_logits: list[torch.Tensor]  # (B, C, H, W) per level
    bbox_regression: list[torch.Tensor]  # (B, 4, H, W) per level: raw ltrb, decoded by the task
    centerness: list[torch.Tensor]  # (B, 1, H, W) per level: logits


class DetectionHead(nn.Module):
    """FCOS outputs per pyramid level: class logits, ltrb distances and centerness logits."""

    def __init__(self, channels: int, num_classes: int, prior_probability: float = 0.01) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError("a detection head needs at least one class")
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.bbox = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        # Focal-loss prior: start predicting "background" everywhere (FCOS/RetinaNet init).
        nn.init.normal_(self.cls_logits.weight, std=0.01)
        nn.init.constant_(
            self.cls_logits.bias, -math.log((1 - prior_probability) / prior_probability)
        )

    def forward(self, levels: list[tuple[torch.Tensor, torch.Tensor]]) -> FCOSOutputs:
        cls_out, box_out, ctr_out = [], [], []
        for cls_feature, reg_feature in levels:
            cls_out.append(self.cls_logits(cls_feature))  # (B, C, H, W)
            box_out.append(self.bbox(reg_feature))  # (B, 4, H, W), raw; decoded by the task
            ctr_out.append(self.centerness(reg_feature))  # (B, 1, H, W)
        return FCOSOutputs(cls_out, box_out, ctr_out)


class ReconstructionOutputs(NamedTuple):
    """What the masked-image-modelling head predicts, and the pooled features it read."""

    reconstruction: torch.Tensor  # (B, 3, H, W): offsets from each image's visible mean
    pooled: torch.Tensor  # (B, C): the deepest map, mean-pooled (for the effective rank)


class ReconstructionHead(nn.Module):
    """SimMIM's light decoder: a 1x1 conv on the deepest map, then pixel shuffle to full size.

    Every stride-32 cell predicts its 32 x 32 x 3 pixels from its own feature vector, so
    what the encoder must carry to the head is the content of the masked cells: a deeper
    decoder would do the inpainting itself and leave the encoder less to learn (SimMIM).
    """

    def __init__(self, in_channels: int, stride: int = 32) -> None:
        super().__init__()
        if in_channels < 1 or stride < 1:
            raise ValueError(f"need positive channels and stride, got {in_channels}, {stride}")
        self.proj = nn.Conv2d(in_channels, 3 * stride * stride, 1)
        self.shuffle = nn.PixelShuffle(stride)
        # Small outputs at first: an untrained head predicts the visible mean (loss ~1).
        nn.init.trunc_normal_(self.proj.weight, std=0.002)
        nn.init.zeros_(self.proj.bias)

    def forward(self, features: list[torch.Tensor]) -> ReconstructionOutputs:
        deepest = features[-1]  # (B, C, H/32, W/32)
        pixels = self.shuffle(self.proj(deepest))  # (B, 3, H, W)
        return ReconstructionOutputs(pixels, deepest.mean(dim=(2, 3)))
