"""Checkpoints store parameter groups separately; any group loads alone."""

import pytest
import torch

from tests.helpers import make_task
from umedpt.model import UMedPTModel
from umedpt.models.presets import PRESETS
from umedpt.training.checkpoint import load_group, load_weights, read_meta, save_checkpoint


def model_for(*tasks, seed: int = 0) -> UMedPTModel:
    torch.manual_seed(seed)
    return UMedPTModel(PRESETS.get("tiny"), list(tasks))


def test_groups_are_written_as_separate_safetensors_files(tmp_path) -> None:
    model = model_for(make_task("a", "classification"), make_task("b", "segmentation"))
    save_checkpoint(tmp_path / "ckpt", model, meta={"step": 3})
    files = sorted(p.name for p in (tmp_path / "ckpt").glob("*.safetensors"))
    assert files == [
        "blocks.classification.safetensors",
        "blocks.segmentation.safetensors",
        "encoder.safetensors",
        "heads.a.safetensors",
        "heads.b.safetensors",
    ]
    meta = read_meta(tmp_path / "ckpt")
    assert meta["step"] == 3 and "encoder" in meta["groups"]
    encoder = load_group(tmp_path / "ckpt", "encoder")
    assert encoder and all(k.startswith("encoder.") for k in encoder)


def test_encoder_alone_loads_into_a_model_with_other_heads(tmp_path) -> None:
    source = model_for(make_task("a", "classification"), seed=1)
    save_checkpoint(tmp_path / "ckpt", source, meta={})
    target = model_for(make_task("new-task", "detection"), seed=2)
    load_weights(target, tmp_path / "ckpt", groups=["encoder"])
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(value, target.encoder.state_dict()[key])


def test_missing_group_and_wrong_shapes_are_explained(tmp_path) -> None:
    source = model_for(make_task("a", "classification"))
    save_checkpoint(tmp_path / "ckpt", source, meta={})
    with pytest.raises(FileNotFoundError, match="no group 'blocks.detection'"):
        load_group(tmp_path / "ckpt", "blocks.detection")
    three_classes = make_task("a", "classification")
    three_classes = type(three_classes)(**{**three_classes.__dict__, "classes": ("x", "y", "z")})
    with pytest.raises(ValueError, match="shape"):
        load_weights(model_for(three_classes), tmp_path / "ckpt")


def test_saving_again_replaces_the_checkpoint_atomically(tmp_path) -> None:
    model = model_for(make_task("a", "classification"))
    save_checkpoint(tmp_path / "ckpt", model, meta={"step": 1})
    save_checkpoint(tmp_path / "ckpt", model, meta={"step": 2})
    assert read_meta(tmp_path / "ckpt")["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
