"""Single-label classification: image vector -> class logits; CE / ln C."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score

from umedpt.config import TaskConfig
from umedpt.data.kinds import Scalar
from umedpt.data.samples import Record, Sample, TaskData
from umedpt.data.stats import class_counts
from umedpt.data.targets import LoadContext, check_label
from umedpt.models.blocks import ImageBlock
from umedpt.models.heads import ClassificationHead
from umedpt.models.presets import ModelConfig
from umedpt.tasks.base import (
    Batch,
    LossComponents,
    TaskMetrics,
    TaskType,
    log_num_classes,
    noise_image,
    register_task_type,
    stack_images,
)


class ClassificationMetrics(TaskMetrics):
    def __init__(self, num_classes: int) -> None:
        self.collection = MetricCollection(
            {
                "accuracy": MulticlassAccuracy(num_classes, average="micro"),
                "balanced_accuracy": MulticlassAccuracy(num_classes, average="macro"),
                "f1": MulticlassF1Score(num_classes, average="macro"),
                "auroc": MulticlassAUROC(num_classes),
            }
        )

    def update(self, outputs: torch.Tensor, batch: Batch) -> None:
        self.collection.update(
            outputs.detach().float().softmax(dim=1).cpu(), batch.targets["labels"].cpu()
        )

    def compute(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.collection.compute().items()}


class Classification(TaskType):
    """One class per image; loss component ``cross_entropy``.

    Record target ``label``: a class index. Sample target ``label``: the checked index (int).
    """

    name = "classification"
    image_level = True
    # Balanced accuracy: on an imbalanced split, plain accuracy rewards the majority class
    # (BreastMNIST's val split is 73% one class); accuracy is still reported beside it.
    primary_metric = "balanced_accuracy"
    min_classes = 2
    target_fields = {"label": Scalar()}
    synthetic_classes = ("absent", "present")

    def load_targets(self, record: Record, sample: Sample, context: LoadContext) -> None:
        label = record.targets.get("label")
        sample.targets["label"] = check_label(label, len(context.task.classes), sample.source)

    def collate(self, samples: list[Sample]) -> Batch:
        labels = torch.tensor([s.targets["label"] for s in samples], dtype=torch.long)
        return Batch(stack_images(samples), {"labels": labels})

    def synthetic_samples(
        self, n: int, generator: torch.Generator, *, image_size: int = 64
    ) -> list[Sample]:
        """Noise; "present" (every second sample) adds a bright square in the middle."""
        samples = []
        low, high = image_size // 4, image_size * 3 // 4
        for i in range(n):
            label = i % 2
            image = noise_image(image_size, generator)
            if label:
                image[:, low:high, low:high] += 120
            samples.append(Sample(image, f"{self.name}-{i}", {"label": label}))
        return samples

    def summarize(self, task: TaskConfig, data: TaskData) -> dict[str, Any]:
        return {
            "class_counts": {
                split: class_counts(
                    [s.targets["label"] for s in samples if "label" in s.targets], task.classes
                )
                for split, samples in data.splits.items()
            }
        }

    def draw(self, ax: Any, sample: Sample, task: TaskConfig) -> None:
        if "label" in sample.targets:
            ax.set_title(task.classes[sample.targets["label"]], fontsize=8)

    def stratum(self, sample: Sample) -> Hashable:
        if "label" not in sample.targets:
            return super().stratum(sample)
        return ("label", int(sample.targets["label"]))

    def fit(self, task: TaskConfig, train: Sequence[Sample]) -> TaskConfig:
        """With ``class_weighting = "balanced"``: each class's weight n / (C * n_c) from the
        training labels, C the classes that have any (a class with none weighs 0), so the
        weights average 1 over the training samples and an untrained model's loss stays ~1."""
        if task.class_weighting != "balanced":
            return task
        labels = [s.targets["label"] for s in train if "label" in s.targets]
        counts = class_counts(labels, task.classes)
        n, c = len(labels), sum(1 for k in counts.values() if k)
        weights = tuple(n / (c * k) if k else 0.0 for k in counts.values())
        return dataclasses.replace(task, class_weights=weights)

    def build_block(self, in_channels: list[int], config: ModelConfig) -> nn.Module:
        return ImageBlock(in_channels, config.image_dim)

    def build_head(self, task: TaskConfig, config: ModelConfig) -> nn.Module:
        return ClassificationHead(config.image_dim, len(task.classes))

    def loss(self, outputs: torch.Tensor, batch: Batch, task: TaskConfig) -> LossComponents:
        labels = batch.targets["labels"]
        if task.class_weights:
            # A plain mean of weighted losses, not F.cross_entropy's weighted mean (which
            # divides by the batch's weights): each sample's loss depends on it alone.
            weight = torch.tensor(task.class_weights, device=outputs.device)
            ce = (
                F.cross_entropy(outputs.float(), labels, reduction="none") * weight[labels]
            ).mean()
        else:
            ce = F.cross_entropy(outputs.float(), labels)
        return {"cross_entropy": ce / log_num_classes(len(task.classes))}

    def metrics(self, task: TaskConfig) -> TaskMetrics:
        return ClassificationMetrics(len(task.classes))


register_task_type(Classification())
