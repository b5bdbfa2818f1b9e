"""Single-label classification: image vector -> class logits; CE / ln C."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score

from umedpt.config import TaskConfig
from umedpt.data.samples import Sample
from umedpt.models.blocks import ImageBlock
from umedpt.models.heads import ClassificationHead
from umedpt.models.presets import ModelConfig
from umedpt.tasks.base import (
    TASK_TYPES,
    Batch,
    TaskMetrics,
    TaskType,
    log_num_classes,
    normalize_images,
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
    name = "classification"
    primary_metric = "accuracy"

    def build_block(self, in_channels: list[int], config: ModelConfig) -> nn.Module:
        return ImageBlock(in_channels, config.image_dim)

    def build_head(self, task: TaskConfig, config: ModelConfig) -> nn.Module:
        return ClassificationHead(config.image_dim, len(task.classes))

    def collate(self, samples: list[Sample]) -> Batch:
        images = normalize_images(torch.stack([s.image for s in samples]))
        labels = torch.tensor([s.label for s in samples], dtype=torch.long)
        return Batch(images, {"labels": labels})

    def loss(self, outputs: torch.Tensor, batch: Batch, task: TaskConfig) -> torch.Tensor:
        ce = F.cross_entropy(outputs.float(), batch.targets["labels"])
        return ce / log_num_classes(len(task.classes))

    def metrics(self, task: TaskConfig) -> TaskMetrics:
        return ClassificationMetrics(len(task.classes))


TASK_TYPES.register(Classification.name, Classification())
