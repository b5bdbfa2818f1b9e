"""Warm starts (``--init``): which weights a source holds, what is loaded, what is refused."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.helpers import assert_group_equal, make_task, write_source
from umedpt.checkpoint import save_checkpoint
from umedpt.export.exporter import BLOCKS_DIR, export_checkpoint
from umedpt.init_weights import InitError, SourceKind, apply_init, read_init, weights_digest
from umedpt.model import UMedPTModel
from umedpt.models.presets import model_config

TINY = model_config("tiny")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, UMedPTModel]:
    return write_source(tmp_path_factory.mktemp("init") / "checkpoint")


@pytest.fixture(scope="module")
def exported(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("init-export") / "export"
    export_checkpoint(source[0], out)
    return out


def no_local_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Empty Hugging Face and torch hub caches, whatever this machine has cached."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def fresh(seed: int = 0) -> UMedPTModel:
    tasks = [make_task("a", "classification"), make_task("b", "segmentation")]
    return UMedPTModel(TINY, tasks, seed=seed)


def test_a_checkpoint_gives_its_encoder_and_the_blocks_both_have(source) -> None:
    folder, trained = source
    model, untouched = fresh(), fresh().state_dict()
    warm = apply_init(model, read_init(str(folder), TINY))
    assert warm.kind == SourceKind.CHECKPOINT
    assert warm.groups == ("encoder", "blocks.classification")
    state = model.state_dict()
    assert_group_equal(state, trained.state_dict(), "encoder")
    assert_group_equal(state, trained.state_dict(), "blocks.classification")
    # what the source does not have, or is never loaded (heads), keeps its seeded init
    assert_group_equal(state, untouched, "blocks.segmentation")
    assert_group_equal(state, untouched, "heads.a")
    assert warm.describe() == f"checkpoint (encoder, blocks.classification; sha256 {warm.digest})"
    assert str(folder) not in warm.describe()


def test_an_exported_timm_folder_is_a_source_with_the_same_weights(source, exported) -> None:
    folder, trained = source
    warm = apply_init(model := fresh(), read_init(str(exported), TINY))
    assert warm.kind == SourceKind.TIMM_FOLDER and "blocks.classification" in warm.groups
    assert_group_equal(model.state_dict(), trained.state_dict(), "encoder")
    # the same tensors, read through timm's loader: the same digest as the checkpoint's
    assert warm.digest == apply_init(fresh(), read_init(str(folder), TINY)).digest
    # a bare timm folder (config.json + model.safetensors) gives the encoder alone
    bare = exported.parent / "bare"
    shutil.copytree(exported, bare)
    shutil.rmtree(bare / BLOCKS_DIR)
    warm = apply_init(model := fresh(), read_init(str(bare), TINY))
    assert warm.groups == ("encoder",)
    assert_group_equal(model.state_dict(), trained.state_dict(), "encoder")


def test_a_source_of_another_architecture_names_the_tensors_that_differ(source) -> None:
    resnet = UMedPTModel(model_config("resnet18"), [make_task("a", "classification")], seed=0)
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    with pytest.raises(
        InitError,
        match=r"\d+ tensors of encoder, blocks.classification differ: missing 'encoder\.",
    ) as exc:
        apply_init(resnet, read_init(str(source[0]), resnet.config))
    assert "--preset/--encoder" in str(exc.value) and "more)" in str(exc.value)
    assert all(torch.equal(before[k], v) for k, v in resnet.state_dict().items())  # untouched
    # same encoder, other block widths: the block is named
    wide = replace(TINY, image_dim=2 * TINY.image_dim)
    model = UMedPTModel(wide, [make_task("a", "classification")], seed=0)
    with pytest.raises(
        InitError,
        match=r"4 tensors .* differ: 'blocks\.classification\.proj\.weight' \(128, 384\) vs "
        r"\(256, 384\)",
    ):
        apply_init(model, read_init(str(source[0]), wide))


def test_missing_unreadable_and_garbage_sources_are_refused(tmp_path, source) -> None:
    with pytest.raises(InitError, match="no such folder"):
        read_init(str(tmp_path / "nowhere"), TINY)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InitError, match="not a folder"):
        read_init(str(tmp_path / "file.txt"), TINY)
    with pytest.raises(InitError, match="neither a umedpt-fl checkpoint"):
        read_init(str(tmp_path), TINY)
    garbage = shutil.copytree(source[0], tmp_path / "garbage")
    (garbage / "encoder.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(InitError, match="unreadable"):
        read_init(str(garbage), TINY)
    (garbage / "checkpoint.json").write_text("{")
    with pytest.raises(InitError, match="unreadable"):
        read_init(str(garbage), TINY)
    heads_only = save_checkpoint(tmp_path / "heads", source[1], groups=["heads.pre"])
    with pytest.raises(InitError, match="holds no encoder"):
        read_init(str(heads_only), TINY)
    timm_folder = tmp_path / "timm"
    timm_folder.mkdir()
    (timm_folder / "config.json").write_text('{"architecture": "resnet18"}')
    (timm_folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InitError, match="timm cannot load this folder"):
        read_init(str(timm_folder), TINY)


def test_timm_weights_come_from_this_machines_caches_only(tmp_path, monkeypatch) -> None:
    import timm
    from timm.models import get_pretrained_cfg

    no_local_weights(monkeypatch, tmp_path)
    resnet = model_config("tiny", "resnet18")
    with pytest.raises(InitError, match="no local pretrained weights .* nothing is downloaded"):
        read_init("timm:resnet18", resnet)
    with pytest.raises(InitError, match="say which timm model"):
        read_init("timm:", resnet)
    url = get_pretrained_cfg("resnet18").url
    weights = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    weights.parent.mkdir(parents=True)
    torch.manual_seed(7)
    reference = timm.create_model("resnet18", pretrained=False).state_dict()
    torch.save(reference, weights)
    model = UMedPTModel(resnet, [make_task("a", "classification")], seed=0)
    warm = apply_init(model, read_init("timm:resnet18", resnet))
    assert warm.describe().startswith("timm:resnet18 (encoder; sha256 ")
    encoder = model.encoder.model.state_dict()
    assert torch.equal(encoder["conv1.weight"], reference["conv1.weight"])
    assert torch.equal(encoder["layer4.1.bn2.running_var"], reference["layer4.1.bn2.running_var"])
    # timm's weights of another architecture than the run's encoder
    with pytest.raises(InitError, match=r"resnet18\) does not fit .* tensors of encoder differ"):
        apply_init(fresh(), read_init("timm:resnet18", TINY))


def test_the_digest_is_of_the_weights_not_of_their_order_or_folder() -> None:
    a = {"encoder.x": torch.arange(4.0), "encoder.y": torch.ones(2, 2)}
    b = dict(reversed(list(a.items())))
    assert weights_digest(a) == weights_digest(b)
    assert weights_digest(a) != weights_digest({**a, "encoder.x": torch.arange(4.0) + 1e-6})
