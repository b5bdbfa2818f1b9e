"""Every encoder preset builds and runs at its own size (random weights, nothing downloaded)."""

from __future__ import annotations

from types import MappingProxyType

import pytest
import torch

from tests.helpers import make_task
from umedpt.model import UMedPTModel
from umedpt.models.presets import PRESETS, model_config

TASKS = [
    make_task("cls", "classification"),
    make_task("seg", "segmentation"),
    make_task("det", "detection"),
]


def _forward_every_task(model: UMedPTModel, size: int) -> None:
    images = torch.zeros(1, 3, size, size)
    model.eval()
    with torch.no_grad():
        assert model(images, "cls").shape == (1, 2)
        assert model(images, "seg").shape == (1, 2, size, size)
        detections = model(images, "det")
    assert [tuple(m.shape[-2:]) for m in detections.cls_logits] == [
        (-(-size // stride),) * 2 for stride in (8, 16, 32, 64, 128)
    ]


@pytest.mark.parametrize(
    ("preset", "size"),
    [("resnet18", 64), pytest.param("swin-t", 224, marks=pytest.mark.slow)],  # Swin-T: 28M
)
def test_preset_runs_at_its_size(preset: str, size: int) -> None:
    config = PRESETS.get(preset)
    assert config.encoder_kwargs.get("img_size", size) == size
    torch.manual_seed(0)
    model = UMedPTModel(config, TASKS)
    assert model.encoder.strides == [4, 8, 16, 32]
    assert model.blocks["classification"].proj.out_features == config.image_dim
    _forward_every_task(model, size)


def test_with_encoder_keeps_the_blocks_and_drops_the_encoder_kwargs() -> None:
    tiny = PRESETS.get("tiny")
    assert tiny.with_encoder(tiny.encoder) is tiny
    other = tiny.with_encoder("resnet18")
    assert other.encoder == "resnet18" and other.encoder_kwargs == MappingProxyType({})
    assert (other.image_dim, other.fpn_channels, other.lr) == (
        tiny.image_dim,
        tiny.fpn_channels,
        tiny.lr,
    )
    assert model_config("tiny", "resnet18") == other
    torch.manual_seed(0)
    model = UMedPTModel(other, TASKS)
    assert model.encoder.out_channels == [64, 128, 256, 512]  # resnet18's, not Swin's
    _forward_every_task(model, 64)
