"""The task-type interface and its registry."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from umedpt.config import TaskConfig
from umedpt.data.samples import Sample
from umedpt.models.presets import ModelConfig
from umedpt.registry import Registry

_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float, normalised as timm's ImageNet models expect."""
    return (images.float() / 255.0 - _MEAN) / _STD


@dataclass
class Batch:
    """Images and the task-type-specific targets of one batch."""

    images: torch.Tensor  # float (B, 3, S, S), normalised
    targets: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        def move(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return value.to(device, non_blocking=True)
            if isinstance(value, list):
                return [move(v) for v in value]
            return value

        return Batch(move(self.images), {k: move(v) for k, v in self.targets.items()})


class TaskMetrics(ABC):
    """Accumulates predictions over batches; ``compute`` returns plain floats."""

    @abstractmethod
    def update(self, outputs: Any, batch: Batch) -> None: ...

    @abstractmethod
    def compute(self) -> dict[str, float]: ...


class TaskType(ABC):
    """One kind of task (classification, segmentation, detection).

    The multi-task loop only calls these methods and sums the named losses: it knows
    nothing about what a task type predicts.
    """

    name: ClassVar[str]
    primary_metric: ClassVar[str]  # the metric reports and benchmarks lead with

    @property
    def block(self) -> str:
        """The shared block this task type trains (``blocks.<block>.*``)."""
        return self.name

    @abstractmethod
    def build_block(self, in_channels: list[int], config: ModelConfig) -> nn.Module: ...

    @abstractmethod
    def build_head(self, task: TaskConfig, config: ModelConfig) -> nn.Module: ...

    @abstractmethod
    def collate(self, samples: list[Sample]) -> Batch: ...

    @abstractmethod
    def loss(self, outputs: Any, batch: Batch, task: TaskConfig) -> torch.Tensor:
        """The task's loss, normalised so that an untrained model scores about 1."""

    @abstractmethod
    def metrics(self, task: TaskConfig) -> TaskMetrics: ...

    def predict(self, outputs: Any, batch: Batch, task: TaskConfig) -> Any:
        """Post-processed predictions (e.g. boxes after NMS); identity by default."""
        return outputs


def log_num_classes(num_classes: int) -> float:
    """ln C, the cross-entropy of a uniform guess over C classes (>= ln 2)."""
    return math.log(max(num_classes, 2))


TASK_TYPES: Registry[TaskType] = Registry("task type")


def get_task_type(name: str) -> TaskType:
    # Importing the implementations registers them; done lazily to avoid import cycles.
    from umedpt.tasks import classification, detection, segmentation  # noqa: F401

    return TASK_TYPES.get(name)
