"""Named model presets: which timm encoder, and how wide the shared blocks are."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from umedpt.registry import Registry


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model's shared part; stored in every checkpoint."""

    encoder: str
    encoder_kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    image_dim: int = 512  # image-level block output ("squeezer")
    decoder_channels: tuple[int, ...] = (96, 64, 32)  # U-Net decoder widths, deep to shallow
    pixel_dim: int = 16  # per-pixel embedding of the segmentation decoder
    fpn_channels: int = 128
    tower_depth: int = 4  # conv layers in each FCOS tower
    lr: float = 1e-4  # AdamW learning rate that suits this encoder
    weight_decay: float = 1e-2
    warmup_steps: int = 0  # linear learning-rate warm-up at the start of training

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it cannot deep-copy the read-only kwargs mapping.
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["encoder_kwargs"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in self.encoder_kwargs.items()
        }
        data["decoder_channels"] = list(self.decoder_channels)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        values = dict(data)
        values["encoder_kwargs"] = MappingProxyType(dict(values.get("encoder_kwargs", {})))
        if "decoder_channels" in values:
            values["decoder_channels"] = tuple(values["decoder_channels"])
        return cls(**values)

    def with_encoder(self, name: str) -> ModelConfig:
        """The same blocks over another timm encoder (preset-specific kwargs are dropped)."""
        if name == self.encoder:
            return self
        return dataclasses.replace(self, encoder=name, encoder_kwargs=MappingProxyType({}))


PRESETS: Registry[ModelConfig] = Registry("model preset")


def model_config(preset: str, encoder: str | None = None) -> ModelConfig:
    """A preset's model configuration, optionally over another timm encoder."""
    config = PRESETS.get(preset)
    return config.with_encoder(encoder) if encoder else config


# Swin with embed dim 48 and depths 2-2-2-2 at 64 px: ~5M parameters, for tests and CPU benchmarks.
PRESETS.register(
    "tiny",
    ModelConfig(
        encoder="swin_tiny_patch4_window7_224",
        encoder_kwargs=MappingProxyType(
            {
                "embed_dim": 48,
                "depths": (2, 2, 2, 2),
                "num_heads": (2, 4, 8, 16),
                "window_size": 4,
                "img_size": 64,
                "strict_img_size": False,
            }
        ),
        image_dim=128,
        decoder_channels=(64, 32, 16),
        pixel_dim=16,
        fpn_channels=64,
        tower_depth=2,
        # Without warm-up, 1e-3 collapses the image-level features of a Swin trained from
        # scratch (every image maps to the same vector; PBC stays at chance). 20 warm-up
        # steps fix that and learn faster than 1e-4 or 3e-4 (experiments/results/centralized.md).
        lr=1e-3,
        warmup_steps=20,
    ),
)
# The paper's setting: Swin-T at 224 px with the blocks' widths from the notes.
PRESETS.register(
    "swin-t",
    ModelConfig(
        encoder="swin_tiny_patch4_window7_224",
        encoder_kwargs=MappingProxyType({"img_size": 224, "strict_img_size": False}),
    ),
)
# A small CNN encoder, for sites without Swin-friendly hardware or for comparisons.
PRESETS.register(
    "resnet18",
    ModelConfig(encoder="resnet18", image_dim=256, fpn_channels=96, tower_depth=2, lr=3e-4),
)
