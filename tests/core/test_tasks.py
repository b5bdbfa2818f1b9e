"""Each task type: losses normalised to about 1 for an untrained model; metrics are right."""

import pytest
import torch

from tests.helpers import make_run, synthetic_samples
from umedpt.model import UMedPTModel
from umedpt.models.heads import FCOSOutputs
from umedpt.models.presets import PRESETS
from umedpt.tasks import TASK_TYPES, Batch, get_task_type, total_loss
from umedpt.tasks.detection import Detection

COMPONENTS = {
    "classification": {"cross_entropy"},
    "multilabel": {"bce"},
    "segmentation": {"dice", "focal"},
    "detection": {"classification", "bbox_regression", "centerness"},
}


def test_the_built_in_types_are_registered_on_import() -> None:
    assert set(COMPONENTS) <= set(TASK_TYPES.names())


@pytest.mark.parametrize("kind", TASK_TYPES.names())
def test_synthetic_samples_carry_the_declared_targets_and_depend_on_the_seed(kind: str) -> None:
    task_type = get_task_type(kind)
    samples = synthetic_samples(kind, 4, torch.Generator().manual_seed(0))
    assert len(samples) == 4
    assert all(set(s.targets) == set(task_type.target_fields) for s in samples)
    assert all(s.image.shape == (3, 64, 64) and s.image.dtype == torch.uint8 for s in samples)
    assert task_type.collate(samples).size == 4
    again = synthetic_samples(kind, 4, torch.Generator().manual_seed(0))
    other = synthetic_samples(kind, 4, torch.Generator().manual_seed(1))
    assert all(torch.equal(a.image, b.image) for a, b in zip(samples, again))
    assert not all(torch.equal(a.image, b.image) for a, b in zip(samples, other))
    small = task_type.synthetic_samples(2, torch.Generator().manual_seed(0), image_size=32)
    assert task_type.collate(small).images.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("kind", TASK_TYPES.names())
def test_untrained_loss_is_about_one(kind: str) -> None:
    run = make_run("t", kind, n_train=8)
    torch.manual_seed(0)
    model = UMedPTModel(PRESETS.get("tiny"), [run.config]).eval()
    task_type = get_task_type(kind)
    batch = task_type.collate(run.data["train"])
    with torch.no_grad():
        components = task_type.loss(model(batch.images, "t"), batch, run.config)
    # a type's component names are in its own test; the built-in ones are checked here
    assert components and set(components) == COMPONENTS.get(kind, set(components))
    assert all(c.ndim == 0 for c in components.values())
    loss = float(total_loss(components))
    assert loss == pytest.approx(sum(float(c) for c in components.values()), rel=1e-6)
    assert 0.3 < loss < 3.0, loss


def test_total_loss_needs_a_component() -> None:
    with pytest.raises(ValueError, match="at least one component"):
        total_loss({})


def test_classification_metrics_on_perfect_and_wrong_predictions() -> None:
    task_type = get_task_type("classification")
    run = make_run("t", "classification", n_train=4)
    labels = torch.tensor([0, 1, 0, 1])
    batch = Batch(torch.zeros(4, 3, 64, 64), {"labels": labels})
    perfect = torch.nn.functional.one_hot(labels, 2).float() * 10
    metrics = task_type.metrics(run.config)
    metrics.update(perfect, batch)
    assert metrics.compute()["accuracy"] == 1.0
    metrics = task_type.metrics(run.config)
    metrics.update(-perfect, batch)
    assert metrics.compute()["accuracy"] == 0.0


def test_segmentation_dice_ignores_background() -> None:
    task_type = get_task_type("segmentation")
    run = make_run("t", "segmentation", n_train=2)
    masks = torch.zeros(1, 8, 8, dtype=torch.long)
    masks[0, :4] = 1
    batch = Batch(torch.zeros(1, 3, 8, 8), {"masks": masks})
    half_right = torch.zeros(1, 2, 8, 8)
    half_right[0, 1, :2] = 5  # predicts the top quarter as foreground: dice = 2*16/(16+32)
    metrics = task_type.metrics(run.config)
    metrics.update(half_right, batch)
    assert metrics.compute()["dice"] == pytest.approx(2 / 3, abs=1e-4)


def test_detection_predictions_are_clipped_and_limited() -> None:
    task_type = get_task_type("detection")
    run = make_run("t", "detection", n_train=2)
    torch.manual_seed(0)
    model = UMedPTModel(PRESETS.get("tiny"), [run.config]).eval()
    batch = task_type.collate(run.data["train"])
    with torch.no_grad():
        outputs = model(batch.images, "t")
    assert isinstance(outputs, FCOSOutputs) and len(outputs.cls_logits) == 5
    # force confident predictions everywhere
    outputs = outputs._replace(
        cls_logits=[c + 20 for c in outputs.cls_logits],
        centerness=[c + 20 for c in outputs.centerness],
    )
    predictions = task_type.predict(outputs, batch, run.config)
    assert len(predictions) == 2
    for p in predictions:
        assert 0 < len(p["boxes"]) <= task_type.max_detections
        assert (p["boxes"] >= 0).all() and (p["boxes"] <= 64).all()
    fewer = Detection(max_detections=3, score_threshold=0.5).predict(outputs, batch, run.config)
    assert [len(p["boxes"]) for p in fewer] == [3, 3]
    assert all((p["scores"] > 0.5).all() for p in fewer)
    none = Detection(score_threshold=1.0).predict(outputs, batch, run.config)
    assert [len(p["boxes"]) for p in none] == [0, 0]


def _detection_outputs(run, seed: int = 0) -> tuple[FCOSOutputs, Batch]:
    torch.manual_seed(seed)
    model = UMedPTModel(PRESETS.get("tiny"), [run.config]).eval()
    batch = get_task_type("detection").collate(run.data["train"])
    with torch.no_grad():
        return model(batch.images, "t"), batch


def test_detection_loss_weights_are_arguments() -> None:
    run = make_run("t", "detection", n_train=2)
    outputs, batch = _detection_outputs(run)
    default = Detection().loss(outputs, batch, run.config)
    heavier = Detection(centerness_weight=1.0).loss(outputs, batch, run.config)
    assert float(heavier["centerness"]) == pytest.approx(5 * float(default["centerness"]))
    assert float(heavier["bbox_regression"]) == pytest.approx(float(default["bbox_regression"]))
    # gamma 0 and alpha -1 (no weighting) turn the focal loss into plain BCE, which is larger
    # on an untrained model whose background points are already confidently negative
    plain = Detection(focal_gamma=0.0, focal_alpha=-1).loss(outputs, batch, run.config)
    assert float(plain["classification"]) > float(default["classification"])


def test_detection_loss_without_boxes_has_only_the_classification_term() -> None:
    run = make_run("t", "detection", n_train=2)
    outputs, batch = _detection_outputs(run)
    empty = Batch(
        batch.images,
        {"boxes": [torch.zeros((0, 4))] * 2, "labels": [torch.zeros((0,), dtype=torch.long)] * 2},
    )
    components = get_task_type("detection").loss(outputs, empty, run.config)
    assert set(components) == COMPONENTS["detection"]
    assert float(components["bbox_regression"]) == 0 and float(components["centerness"]) == 0
    assert float(components["classification"]) > 0


def test_balanced_class_weighting_weighs_each_class_by_its_training_rarity() -> None:
    import dataclasses

    from umedpt.data.samples import Sample, TaskData
    from umedpt.training.trainer import TaskRun

    task_type = get_task_type("classification")
    plain = make_run("t", "classification", n_train=4).config
    task = dataclasses.replace(plain, classes=("a", "b", "c"), class_weighting="balanced")
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    train = [Sample(image, str(i), {"label": y}) for i, y in enumerate([0, 0, 0, 1])]
    run = TaskRun.of(task, TaskData({"train": train, "val": [], "test": []}))
    # n / (C * n_c), C = 2 classes with training images: 4 / (2 * 3), 4 / (2 * 1); c weighs 0
    assert run.config.class_weights == pytest.approx((2 / 3, 2.0, 0.0))
    assert TaskRun.of(plain, run.data).config.class_weights == ()  # "none": unweighted

    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 3.0]])
    labels = torch.tensor([0, 1, 1, 0])
    batch = Batch(torch.zeros(4, 3, 64, 64), {"labels": labels})
    each = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = (each * torch.tensor([2 / 3, 2.0, 2.0, 2 / 3])).mean() / torch.log(torch.tensor(3.0))
    got = task_type.loss(logits, batch, run.config)["cross_entropy"]
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    # a uniform guess over the training distribution still scores exactly 1
    uniform = torch.zeros(4, 3)
    train_batch = Batch(torch.zeros(4, 3, 64, 64), {"labels": torch.tensor([0, 0, 0, 1])})
    assert float(task_type.loss(uniform, train_batch, run.config)["cross_entropy"]) == (
        pytest.approx(1.0, rel=1e-6)
    )
