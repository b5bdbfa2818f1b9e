"""The shared encoder: any timm model with a feature pyramid, created by name."""

from __future__ import annotations

import timm
import torch
from torch import nn

from umedpt.models.presets import ModelConfig


class Encoder(nn.Module):
    """Wraps ``timm.create_model(name, features_only=True)`` and always returns NCHW maps.

    timm's Swin returns channels-last (NHWC) maps; CNNs return NCHW. Converting in this one
    place lets every decoder assume NCHW (as smp's ``timm_universal`` encoder does).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        # pretrained=False always: nothing may be downloaded at run time.
        self.model = timm.create_model(
            config.encoder, pretrained=False, features_only=True, **dict(config.encoder_kwargs)
        )
        info = self.model.feature_info
        reductions = info.reduction()
        # Keep the last four levels (strides 4..32); CNNs also expose a stride-2 map.
        self.out_indices = list(range(len(reductions)))[-4:]
        self.out_channels: list[int] = [info.channels()[i] for i in self.out_indices]
        self.strides: list[int] = [reductions[i] for i in self.out_indices]
        if self.strides != [4, 8, 16, 32]:
            raise ValueError(
                f"encoder '{config.encoder}' gives strides {reductions}; umedpt needs a feature "
                "pyramid with strides 4, 8, 16, 32 (Swin, ConvNeXt, ResNet, ...)"
            )
        self.channels_last_output = str(getattr(self.model, "output_fmt", "NCHW")).endswith("NHWC")

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = self.model(images)
        features = [features[i] for i in self.out_indices]
        if self.channels_last_output:
            features = [f.permute(0, 3, 1, 2).contiguous() for f in features]  # NHWC -> NCHW
        return features


def feature_channels(config: ModelConfig) -> list[int]:
    """The encoder's pyramid widths (strides 4..32), without building its weights.

    For heads that read the encoder's maps directly (a parameter-free shared block):
    ``build_head`` gets the model config, not the encoder. Built on the meta device, this
    allocates nothing and draws nothing from torch's RNG.
    """
    with torch.device("meta"):
        return Encoder(config).out_channels
