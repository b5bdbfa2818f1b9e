import numpy as np
import pytest
import torch

from tests.helpers import make_task
from umedpt import contract
from umedpt.model import UMedPTModel
from umedpt.models.presets import PRESETS


@pytest.fixture(scope="module")
def model() -> UMedPTModel:
    tasks = [
        make_task("xray", "classification"),
        make_task("organs", "segmentation"),
        make_task("cells", "detection"),
    ]
    torch.manual_seed(0)
    return UMedPTModel(PRESETS.get("tiny"), tasks)


def test_every_parameter_lives_in_exactly_one_group(model: UMedPTModel) -> None:
    groups = {contract.group_of(name) for name in model.state_dict()}
    assert groups == {
        "encoder",
        "blocks.classification",
        "blocks.segmentation",
        "blocks.detection",
        "heads.xray",
        "heads.organs",
        "heads.cells",
    }


def test_shared_state_excludes_heads(model: UMedPTModel) -> None:
    shared = model.shared_state_dict()
    assert shared, "the shared state must not be empty"
    assert not [k for k in shared if k.startswith("heads.")]
    heads = [k for k in model.state_dict() if k.startswith("heads.")]
    assert heads and set(shared) | set(heads) == set(model.state_dict())


def test_shared_parameters_are_encoder_and_blocks(model: UMedPTModel) -> None:
    shared_ids = {id(p) for p in model.shared_parameters()}
    for name, parameter in model.named_parameters():
        assert (id(parameter) in shared_ids) == (not name.startswith("heads.")), name


@pytest.mark.parametrize(
    "name", ["encoder", "blocks.x", "heads", "decoder.weight", "head.x.weight"]
)
def test_names_outside_the_contract_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="parameter-group contract"):
        contract.group_of(name)


def test_select_keeps_order_and_groups() -> None:
    state = {"encoder.a": 1, "blocks.seg.b": 2, "heads.t.c": 3, "encoder.d": 4}
    assert list(contract.select(state, ["encoder"])) == ["encoder.a", "encoder.d"]
    assert contract.shared_only(state) == {"encoder.a": 1, "blocks.seg.b": 2, "encoder.d": 4}


def test_site_model_builds_only_the_blocks_its_tasks_use() -> None:
    model = UMedPTModel(PRESETS.get("tiny"), [make_task("only-seg", "segmentation")])
    assert list(model.blocks) == ["segmentation"]
    assert model.shared_groups() == ["encoder", "blocks.segmentation"]


def test_seeded_parts_do_not_depend_on_the_other_parts() -> None:
    """A site's model and the server's all-blocks model agree on what they share."""
    preset = PRESETS.get("tiny")
    site = UMedPTModel(preset, [make_task("seg", "segmentation")], seed=7)
    server = UMedPTModel(preset, [], extra_blocks=["classification", "segmentation"], seed=7)
    for key, value in site.shared_state_dict().items():
        assert torch.equal(value, server.state_dict()[key]), key
    other_seed = UMedPTModel(preset, [], extra_blocks=["segmentation"], seed=8)
    assert not torch.equal(
        other_seed.state_dict()["blocks.segmentation.to_pixels.0.weight"],
        server.state_dict()["blocks.segmentation.to_pixels.0.weight"],
    )


def test_state_mismatch_is_one_rule_for_tensors_and_arrays() -> None:
    expected = {"encoder.a": torch.zeros(2, 3), "blocks.b.w": torch.zeros(4)}
    same = {"encoder.a": np.zeros((2, 3), np.float32), "blocks.b.w": np.ones(4, np.float32)}
    assert contract.state_mismatch(same, expected) is None
    reordered = dict(reversed(list(same.items())))
    assert contract.state_mismatch(reordered, expected) is None
    assert contract.state_mismatch(reordered, expected, ordered=True) == "keys differ in order"
    extra = {**same, "heads.t.w": np.zeros(1, np.float32)}
    assert "unexpected ['heads.t.w']" in contract.state_mismatch(extra, expected)
    missing = {"encoder.a": same["encoder.a"]}
    assert "missing ['blocks.b.w']" in contract.state_mismatch(missing, expected)
    wrong_shape = {**same, "blocks.b.w": np.zeros(5, np.float32)}
    assert contract.state_mismatch(wrong_shape, expected) == (
        "'blocks.b.w' has shape (5,), expected (4,)"
    )
    wrong_dtype = {**same, "blocks.b.w": np.zeros(4, np.float64)}
    assert contract.state_mismatch(wrong_dtype, expected) == (
        "'blocks.b.w' has dtype float64, expected float32"
    )
    assert contract.state_mismatch(wrong_dtype, expected, check_dtype=False) is None
