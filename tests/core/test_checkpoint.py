"""One checkpoint format: groups as separate files, the model config beside them."""

import json

import pytest
import torch

from tests.helpers import make_task
from umedpt.checkpoint import (
    CheckpointError,
    load_group,
    load_model,
    load_trainer_state,
    load_weights,
    read_header,
    read_meta,
    save_checkpoint,
    save_weights,
)
from umedpt.model import UMedPTModel
from umedpt.models.presets import PRESETS


def model_for(*tasks, seed: int = 0, extra_blocks=()) -> UMedPTModel:
    return UMedPTModel(PRESETS.get("tiny"), list(tasks), seed=seed, extra_blocks=extra_blocks)


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
    header = read_header(tmp_path / "ckpt")
    assert header["model"] == PRESETS.get("tiny").to_dict()
    assert header["tasks"]["b"]["type"] == "segmentation"
    assert read_meta(tmp_path / "ckpt") == {"step": 3}
    encoder = load_group(tmp_path / "ckpt", "encoder")
    assert encoder and all(k.startswith("encoder.") for k in encoder)


def test_load_model_rebuilds_encoder_blocks_and_heads_from_the_folder_alone(tmp_path) -> None:
    source = model_for(make_task("a", "classification"), make_task("d", "detection"), seed=3)
    save_checkpoint(tmp_path / "ckpt", source)
    loaded = load_model(tmp_path / "ckpt")
    assert set(loaded.heads) == {"a", "d"} and set(loaded.blocks) == set(source.blocks)
    want = source.state_dict()
    got = loaded.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    images = torch.randn(2, 3, 64, 64)
    source.eval(), loaded.eval()
    assert torch.equal(loaded(images, "a"), source(images, "a"))


def test_shared_weights_alone_load_as_a_headless_model(tmp_path) -> None:
    source = model_for(extra_blocks=("classification", "segmentation", "detection"), seed=1)
    save_weights(tmp_path / "global", source.shared_state_dict(), source.config)
    loaded = load_model(tmp_path / "global")
    assert len(loaded.heads) == 0
    assert set(loaded.blocks) == {"classification", "segmentation", "detection"}
    for key, value in source.shared_state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_encoder_alone_loads_into_a_model_with_other_heads(tmp_path) -> None:
    source = model_for(make_task("a", "classification"), seed=1)
    save_checkpoint(tmp_path / "ckpt", source)
    target = model_for(make_task("new-task", "detection"), seed=2)
    load_weights(target, tmp_path / "ckpt", groups=["encoder"])
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(value, target.encoder.state_dict()[key])


def test_missing_group_wrong_shapes_and_foreign_folders_are_explained(tmp_path) -> None:
    source = model_for(make_task("a", "classification"))
    save_checkpoint(tmp_path / "ckpt", source)
    with pytest.raises(CheckpointError, match="no group 'blocks.detection'"):
        load_group(tmp_path / "ckpt", "blocks.detection")
    three_classes = make_task("a", "classification")
    three_classes = type(three_classes)(**{**three_classes.__dict__, "classes": ("x", "y", "z")})
    with pytest.raises(CheckpointError, match="shape"):
        load_weights(model_for(three_classes), tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="not a umedpt-fl checkpoint"):
        load_model(tmp_path)
    header = json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())
    (tmp_path / "ckpt" / "checkpoint.json").write_text(json.dumps({**header, "version": 99}))
    with pytest.raises(CheckpointError, match="version 99"):
        load_model(tmp_path / "ckpt")


def test_saving_again_replaces_the_checkpoint_atomically(tmp_path) -> None:
    model = model_for(make_task("a", "classification"))
    save_checkpoint(tmp_path / "ckpt", model, meta={"step": 1})
    save_checkpoint(tmp_path / "ckpt", model, meta={"step": 2})
    assert read_meta(tmp_path / "ckpt")["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_restored_trainer_state_changed_in_place_leaves_its_file_as_saved(tmp_path) -> None:
    # load_trainer_state memory-maps trainer.pt: the optimizer's in-place updates must stay
    # in memory (copy on write), or training would rewrite the saved round under the site.
    model = model_for(make_task("a", "classification"))
    state = {"moments": torch.arange(6.0), "step": 2}
    save_checkpoint(tmp_path / "ckpt", model, groups=["heads.a"], trainer_state=state)
    loaded = load_trainer_state(tmp_path / "ckpt")
    assert loaded is not None and torch.equal(loaded["moments"], state["moments"])
    loaded["moments"].mul_(10)
    again = load_trainer_state(tmp_path / "ckpt")
    assert again is not None and torch.equal(again["moments"], torch.arange(6.0))
    assert again["step"] == 2
    assert load_trainer_state(tmp_path / "missing") is None
