"""Each task type: losses normalised to about 1 for an untrained model; metrics are right."""

import pytest
import torch

from tests.helpers import make_run
from umedpt.model import UMedPTModel
from umedpt.models.presets import PRESETS
from umedpt.tasks import Batch, get_task_type


@pytest.mark.parametrize("kind", ["classification", "segmentation", "detection"])
def test_untrained_loss_is_about_one(kind: str) -> None:
    run = make_run("t", kind, n_train=8)
    torch.manual_seed(0)
    model = UMedPTModel(PRESETS.get("tiny"), [run.config]).eval()
    task_type = get_task_type(kind)
    batch = task_type.collate(run.data["train"])
    with torch.no_grad():
        loss = float(task_type.loss(model(batch.images, "t"), batch, run.config))
    assert 0.3 < loss < 3.0, loss


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
    # force confident predictions everywhere
    outputs = ([c + 20 for c in outputs[0]], outputs[1], [c + 20 for c in outputs[2]])
    predictions = task_type.predict(outputs, batch, run.config)
    assert len(predictions) == 2
    for p in predictions:
        assert 0 < len(p["boxes"]) <= task_type.max_detections
        assert (p["boxes"] >= 0).all() and (p["boxes"] <= 64).all()
