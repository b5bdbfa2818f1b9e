"""Shared blocks, one per task type. They take channel lists, never encoder objects.

All norms are GroupNorm/LayerNorm: sites (and tasks) see different image statistics,
and DP-SGD cannot train through BatchNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= 8 that divides ``channels``."""
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def conv_norm_act(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        group_norm(out_channels),
        nn.GELU(),
    )


class ImageBlock(nn.Module):
    """The "squeezer": pools the deepest map into one image vector (single- and multi-label)."""

    def __init__(self, in_channels: list[int], dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels[-1], dim)
        self.norm = nn.LayerNorm(dim)
        self.act = nn.GELU()

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        pooled = features[-1].mean(dim=(2, 3))  # (B, C)
        return self.act(self.norm(self.proj(pooled)))  # (B, dim)


class PixelDecoder(nn.Module):
    """U-Net decoder over the stride-4..32 pyramid -> a per-pixel embedding at full size."""

    def __init__(self, in_channels: list[int], widths: tuple[int, ...], pixel_dim: int) -> None:
        super().__init__()
        if len(widths) != len(in_channels) - 1:
            raise ValueError(
                f"decoder_channels needs {len(in_channels) - 1} widths (one per skip "
                f"connection), got {len(widths)}"
            )
        deep_to_shallow_skips = in_channels[-2::-1]  # e.g. 192, 96, 48
        stages = []
        current = in_channels[-1]
        for skip, width in zip(deep_to_shallow_skips, widths):
            stages.append(
                nn.Sequential(conv_norm_act(current + skip, width), conv_norm_act(width, width))
            )
            current = width
        self.stages = nn.ModuleList(stages)
        self.to_pixels = conv_norm_act(current, pixel_dim)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for stage, skip in zip(self.stages, features[-2::-1]):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = stage(torch.cat([x, skip], dim=1))
        # x is at stride 4: upsample to the input size for per-pixel outputs.
        x = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
        return self.to_pixels(x)  # (B, pixel_dim, H, W)


class DetectionNeck(nn.Module):
    """FPN (P3-P7) plus shared FCOS classification and regression towers.

    Returns, per pyramid level, the classification-tower and regression-tower maps; the
    per-task head turns them into class logits, boxes and centerness.
    """

    strides = (8, 16, 32, 64, 128)

    def __init__(self, in_channels: list[int], channels: int, tower_depth: int) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(
            in_channels[1:],  # strides 8, 16, 32
            channels,
            extra_blocks=LastLevelP6P7(channels, channels),
            norm_layer=group_norm,
        )
        self.cls_tower = nn.Sequential(
            *[conv_norm_act(channels, channels) for _ in range(tower_depth)]
        )
        self.reg_tower = nn.Sequential(
            *[conv_norm_act(channels, channels) for _ in range(tower_depth)]
        )

    def forward(self, features: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pyramid = self.fpn({str(i): f for i, f in enumerate(features[1:])})
        return [(self.cls_tower(level), self.reg_tower(level)) for level in pyramid.values()]
