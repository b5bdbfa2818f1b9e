"""Multi-label classification (type ``"multilabel"``): any number of classes per image.

Each class is a yes/no question about the image (ChestMNIST's 14 findings, say), answered
by one logit of a linear head on the shared image vector. It trains the same image-level
block ("squeezer") as single-label classification, so the two share ``blocks.classification``.

Loss: binary cross-entropy with logits, averaged over images and classes and divided by
ln 2 (what BCE scores at p = 0.5), so an untrained model scores about 1. Metrics: AUROC per
class (``auroc.<class>``) and their mean over the classes that have both positive and
negative examples (``auroc``, the primary metric), and macro F1 at a 0.5 threshold.

Data: ``csv`` with a ``labels`` column of ``|``-separated class names (an empty cell: no
class is present) and ``npz`` with an (N, C) 0/1 label array, as MedMNIST's ChestMNIST ships.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MultilabelAUROC, MultilabelF1Score

from umedpt.config import TaskConfig
from umedpt.data.kinds import Stacked
from umedpt.data.samples import Record, Sample, TaskData
from umedpt.data.stats import describe
from umedpt.data.targets import LoadContext, check_labels
from umedpt.models.blocks import ImageBlock
from umedpt.models.heads import ClassificationHead
from umedpt.models.presets import ModelConfig
from umedpt.tasks.base import (
    Batch,
    LossComponents,
    TaskMetrics,
    TaskType,
    noise_image,
    register_task_type,
    stack_images,
)

LN_2 = math.log(2.0)


class MultiLabelMetrics(TaskMetrics):
    """Per-class AUROC, their macro mean over the classes it is defined for, and macro F1."""

    def __init__(self, classes: tuple[str, ...]) -> None:
        self.classes = classes
        self.auroc = MultilabelAUROC(len(classes), average=None)
        self.f1 = MultilabelF1Score(len(classes), average="macro")
        self.positives = torch.zeros(len(classes), dtype=torch.long)
        self.count = 0

    def update(self, outputs: torch.Tensor, batch: Batch) -> None:
        probs = outputs.detach().float().sigmoid().cpu()  # (B, C)
        targets = batch.targets["labels"].cpu().long()  # (B, C) 0/1
        self.auroc.update(probs, targets)
        self.f1.update(probs, targets)
        self.positives += targets.sum(dim=0)
        self.count += targets.shape[0]

    def compute(self) -> dict[str, float]:
        # AUROC is undefined for a class without positives (or negatives) in the split:
        # torchmetrics warns and scores it 0; report NaN and leave it out of the mean.
        defined = (self.positives > 0) & (self.positives < self.count)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No (positive|negative) samples in targets")
            per_class = self.auroc.compute()  # (C,)
        per_class = torch.where(defined, per_class, torch.full_like(per_class, math.nan))
        macro = float(per_class[defined].mean()) if defined.any() else math.nan
        return {
            "auroc": macro,
            "f1": float(self.f1.compute()),
            **{f"auroc.{name}": float(v) for name, v in zip(self.classes, per_class)},
        }


class MultiLabel(TaskType):
    """Any number of classes per image; loss component ``bce``.

    Record target ``labels``: the positive class indices (``()``: none is positive). Sample
    target ``labels``: a uint8 (C,) multi-hot vector.
    """

    name = "multilabel"
    image_level = True
    primary_metric = "auroc"
    min_classes = 2  # one yes/no class is single-label classification with two classes
    target_fields = {"labels": Stacked()}
    synthetic_classes = ("left", "right")

    @property
    def block(self) -> str:
        return "classification"  # the image-level block, shared with single-label tasks

    def load_targets(self, record: Record, sample: Sample, context: LoadContext) -> None:
        labels = record.targets.get("labels")
        multi_hot = check_labels(labels, len(context.task.classes), sample.source)
        sample.targets["labels"] = torch.from_numpy(multi_hot)

    def collate(self, samples: list[Sample]) -> Batch:
        labels = torch.stack([s.targets["labels"] for s in samples]).float()  # (B, C)
        return Batch(stack_images(samples), {"labels": labels})

    def synthetic_samples(
        self, n: int, generator: torch.Generator, *, image_size: int = 64
    ) -> list[Sample]:
        """Two independent findings: a bright square on the left half, one on the right half."""
        samples = []
        s = image_size
        rows = slice(s * 5 // 16, s * 11 // 16)
        halves = (slice(s // 16, s * 7 // 16), slice(s * 9 // 16, s * 15 // 16))
        for i in range(n):
            present = (i % 2, (i // 2) % 2)  # every combination, including none and both
            image = noise_image(image_size, generator)
            for columns, on in zip(halves, present):
                if on:
                    image[:, rows, columns] += 120
            labels = torch.tensor(present, dtype=torch.uint8)
            samples.append(Sample(image, f"{self.name}-{i}", {"labels": labels}))
        return samples

    def summarize(self, task: TaskConfig, data: TaskData) -> dict[str, Any]:
        positives, per_image = {}, []
        for split, samples in data.splits.items():
            counts = torch.zeros(len(task.classes), dtype=torch.long)
            for s in samples:
                if "labels" in s.targets:
                    counts += s.targets["labels"].long()
                    per_image.append(int(s.targets["labels"].sum()))
            positives[split] = {name: int(n) for name, n in zip(task.classes, counts)}
        return {
            "positives_per_class": positives,
            "labels_per_image": {
                **describe(per_image),
                "images_without_labels": per_image.count(0),
            },
        }

    def draw(self, ax: Any, sample: Sample, task: TaskConfig) -> None:
        if "labels" not in sample.targets:
            return
        names = [task.classes[i] for i in sample.targets["labels"].nonzero().flatten().tolist()]
        ax.set_title(", ".join(names) or "(none)", fontsize=8, wrap=True)

    def stratum(self, sample: Sample) -> Hashable:
        if "labels" not in sample.targets:
            return super().stratum(sample)
        return ("labels", tuple(int(i) for i in sample.targets["labels"].nonzero().flatten()))

    def build_block(self, in_channels: list[int], config: ModelConfig) -> nn.Module:
        return ImageBlock(in_channels, config.image_dim)

    def build_head(self, task: TaskConfig, config: ModelConfig) -> nn.Module:
        return ClassificationHead(config.image_dim, len(task.classes))  # one logit per class

    def loss(self, outputs: torch.Tensor, batch: Batch, task: TaskConfig) -> LossComponents:
        bce = F.binary_cross_entropy_with_logits(outputs.float(), batch.targets["labels"])
        return {"bce": bce / LN_2}

    def metrics(self, task: TaskConfig) -> TaskMetrics:
        return MultiLabelMetrics(task.classes)


register_task_type(MultiLabel())
