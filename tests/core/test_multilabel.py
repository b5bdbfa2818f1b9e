"""Multi-label classification: one module, plugged in through the task-type seam only."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from tests.helpers import make_run, make_task
from umedpt.data.images import ImageSource
from umedpt.data.preview import summarize
from umedpt.data.samples import ImageRef, Record, Sample, TaskData
from umedpt.data.targets import LoadContext
from umedpt.errors import DataError
from umedpt.model import UMedPTModel
from umedpt.models.blocks import ImageBlock
from umedpt.models.presets import PRESETS
from umedpt.tasks import Batch, get_task_type, total_loss
from umedpt.training.trainer import MultiTaskTrainer, TrainConfig

MULTI = get_task_type("multilabel")
CLASSES = ("effusion", "mass", "nodule")


def _task():
    return make_task("chest", "multilabel")


def _sample(labels: list[int] | None = None) -> Sample:
    sample = Sample(torch.zeros(3, 8, 8, dtype=torch.uint8), "x.png", original_size=(8, 8))
    if labels is not None:
        sample.targets["labels"] = torch.tensor(labels, dtype=torch.uint8)
    return sample


def test_registered_with_the_image_level_block() -> None:
    assert MULTI.name == "multilabel" and MULTI.primary_metric == "auroc"
    assert MULTI.block == get_task_type("classification").block == "classification"


def test_load_targets_makes_a_multi_hot_vector() -> None:
    task = make_task("chest", "multilabel")  # classes: left, right
    context = LoadContext(task, ImageSource())
    rec = Record(ImageRef(Path("x.png")), targets={"labels": (1,)})
    sample = _sample()
    MULTI.load_targets(rec, sample, context)
    labels = sample.targets["labels"]
    assert labels.dtype == torch.uint8 and labels.tolist() == [0, 1]
    none = _sample()
    MULTI.load_targets(Record(ImageRef(Path("x.png")), targets={"labels": ()}), none, context)
    assert none.targets["labels"].tolist() == [0, 0]  # no positive label is a valid answer


@pytest.mark.parametrize(
    ("labels", "problem"), [(None, "no labels"), ((2,), "out of range"), ((-1,), "out of range")]
)
def test_load_targets_rejects_bad_labels(labels, problem) -> None:
    context = LoadContext(make_task("chest", "multilabel"), ImageSource())
    rec = Record(ImageRef(Path("x.png")), targets={} if labels is None else {"labels": labels})
    with pytest.raises(DataError, match=problem) as info:
        MULTI.load_targets(rec, _sample(), context)
    assert info.value.source == "x.png"


def test_collate_stacks_float_targets() -> None:
    batch = MULTI.collate([_sample([1, 0]), _sample([1, 1])])
    assert batch.images.shape == (2, 3, 8, 8)
    assert batch.targets["labels"].dtype == torch.float32
    assert batch.targets["labels"].tolist() == [[1.0, 0.0], [1.0, 1.0]]


def test_loss_is_bce_over_ln2() -> None:
    task = make_task("chest", "multilabel")
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    batch = Batch(torch.zeros(2, 3, 8, 8), {"labels": targets})
    # p = 0.5 everywhere: BCE is ln 2 per label, so the normalised loss is exactly 1
    assert float(MULTI.loss(torch.zeros(2, 2), batch, task)["bce"]) == pytest.approx(1.0)
    logits = torch.tensor([[2.0, -1.0], [0.5, -3.0]])
    p = logits.sigmoid()
    bce = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    components = MULTI.loss(logits, batch, task)
    assert set(components) == {"bce"}
    assert float(components["bce"]) == pytest.approx(float(bce) / math.log(2), rel=1e-5)


def test_metrics_per_class_and_macro_auroc() -> None:
    task = make_task("chest", "multilabel")
    task = type(task)(**{**task.__dict__, "classes": CLASSES})
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    logits = torch.tensor(
        [[3.0, -1.0, 0.0], [-2.0, 2.0, 0.0], [1.0, -1.5, 0.0], [-1.0, -2.0, 0.0]]
    )  # effusion ranked perfectly; mass: positives 2.0, -1.5 vs negatives -1.0, -2.0
    metrics = MULTI.metrics(task)
    half = 2
    metrics.update(logits[:half], Batch(torch.zeros(half, 3, 8, 8), {"labels": targets[:half]}))
    metrics.update(logits[half:], Batch(torch.zeros(2, 3, 8, 8), {"labels": targets[half:]}))
    result = metrics.compute()
    assert result["auroc.effusion"] == pytest.approx(1.0)
    assert result["auroc.mass"] == pytest.approx(0.75)  # 3 of the 4 (pos, neg) pairs ordered
    assert math.isnan(result["auroc.nodule"])  # no positive: undefined, left out of the mean
    assert result["auroc"] == pytest.approx((1.0 + 0.75) / 2)
    # at threshold 0.5: effusion F1 1, mass 2/3 (1 TP, 1 FN), nodule 0 (no TP)
    assert result["f1"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)


def test_summary_counts_positives_per_class_and_split() -> None:
    task = make_task("chest", "multilabel")
    data = TaskData({"train": [_sample([1, 0]), _sample([1, 1])], "val": [_sample([0, 0])]})
    summary = summarize(task, data)
    assert summary["type"] == "multilabel"
    assert summary["positives_per_class"] == {
        "train": {"left": 2, "right": 1},
        "val": {"left": 0, "right": 0},
    }
    assert summary["labels_per_image"]["images_without_labels"] == 1
    assert summary["labels_per_image"]["max"] == 2


def test_preview_title_lists_the_positive_classes() -> None:
    task = make_task("chest", "multilabel")
    ax = Figure().add_subplot()
    MULTI.draw(ax, _sample([1, 1]), task)
    assert ax.get_title() == "left, right"
    MULTI.draw(ax, _sample([0, 0]), task)
    assert ax.get_title() == "(none)"


def test_shares_the_classification_block_in_one_model() -> None:
    tasks = [make_task("cls", "classification"), make_task("chest", "multilabel")]
    model = UMedPTModel(PRESETS.get("tiny"), tasks)
    assert list(model.blocks) == ["classification"]
    assert isinstance(model.blocks["classification"], ImageBlock)
    assert model.heads["chest"].linear.out_features == 2
    images = torch.zeros(2, 3, 64, 64)
    assert model(images, "chest").shape == (2, 2)


def test_trains_and_evaluates_through_the_generic_loop() -> None:
    runs = [make_run("chest", "multilabel", n_train=16, n_val=8)]
    torch.manual_seed(0)
    model = UMedPTModel(PRESETS.get("tiny"), [r.config for r in runs])
    trainer = MultiTaskTrainer(model, runs, TrainConfig(warmup_steps=0))
    first = trainer.train_steps(2)
    assert set(first.components["chest"]) == {"bce"}
    assert first.components["chest"]["bce"] == pytest.approx(first.losses["chest"])
    trainer.train_steps(8)
    last = trainer.train_steps(2)
    assert last.losses["chest"] < 0.8 * first.losses["chest"], (first.losses, last.losses)
    results = trainer.evaluate("val")
    assert {"loss", "auroc", "f1", "auroc.left", "auroc.right"} <= set(results["chest"])
    assert 0.0 <= results["chest"]["auroc"] <= 1.0


def test_untrained_total_loss_is_about_one() -> None:
    run = make_run("t", "multilabel", n_train=8)
    torch.manual_seed(0)
    model = UMedPTModel(PRESETS.get("tiny"), [run.config]).eval()
    batch = MULTI.collate(run.data["train"])
    with torch.no_grad():
        loss = float(total_loss(MULTI.loss(model(batch.images, "t"), batch, run.config)))
    assert 0.8 < loss < 1.25, loss
