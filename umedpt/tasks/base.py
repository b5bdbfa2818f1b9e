"""The task-type interface and its registry.

A task type is one module that owns everything specific to one kind of target: how a
Record's annotations become a Sample's targets and which targets those are (names and
kinds, all the data cache needs), how samples are batched, its head, its named loss
components, its metrics, how its data is summarised, drawn and stratified, and the small
random samples that tests and benchmarks train on. Nothing else in the package branches on
a type's name or its target fields; adding a type is one module that calls
:func:`register_task_type`, imported by ``umedpt/tasks/__init__.py``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from umedpt.config import TaskConfig
from umedpt.data.augment import Transform, augment_image
from umedpt.data.kinds import TargetKind
from umedpt.data.samples import Record, Sample, TaskData
from umedpt.data.targets import LoadContext
from umedpt.models.presets import ModelConfig
from umedpt.registry import Registry

_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float, normalised as timm's ImageNet models expect."""
    return (images.float() / 255.0 - _MEAN) / _STD


def stack_images(samples: list[Sample]) -> torch.Tensor:
    """The normalised image batch (B, 3, S, S) of ``samples``."""
    return normalize_images(torch.stack([s.image for s in samples]))


def noise_image(size: int, generator: torch.Generator) -> torch.Tensor:
    """A dim uint8 (3, size, size) noise image: what synthetic samples draw their target on."""
    return torch.randint(0, 100, (3, size, size), generator=generator, dtype=torch.uint8)


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


LossComponents = dict[str, torch.Tensor]


def total_loss(components: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The loss to backpropagate: the sum of a task's named loss components."""
    values = list(components.values())
    if not values:
        raise ValueError("a task's loss needs at least one component")
    return torch.stack([v.float() for v in values]).sum()


class TaskType(ABC):
    """One kind of task (classification, segmentation, detection, multi-label).

    The multi-task loop only calls these methods and sums the named loss components: it
    knows nothing about what a task type predicts.
    """

    name: ClassVar[str]
    primary_metric: ClassVar[str]  # the metric reports and benchmarks lead with
    min_classes: ClassVar[int] = 1  # the config validator rejects tasks with fewer classes
    # One prediction per image from the pooled pyramid (classification, multi-label): an
    # evaluation probes it with standardised pooled features (umedpt.evaluation.probe).
    image_level: ClassVar[bool] = False
    # The Sample targets ``load_targets`` sets, by kind: the data cache stores exactly these.
    target_fields: ClassVar[Mapping[str, TargetKind]]
    synthetic_classes: ClassVar[tuple[str, ...]]  # the classes ``synthetic_samples`` draws

    @property
    def block(self) -> str:
        """The shared block this task type trains (``blocks.<block>.*``)."""
        return self.name

    # -- data -------------------------------------------------------------------------
    @abstractmethod
    def load_targets(self, record: Record, sample: Sample, context: LoadContext) -> None:
        """Validate ``record``'s annotations and set ``sample``'s target fields.

        ``sample`` holds the resized image and its ``original_size``; raise DataError
        (naming the file) for a bad annotation.
        """

    @abstractmethod
    def collate(self, samples: list[Sample]) -> Batch: ...

    def collate_eval(self, samples: list[Sample]) -> Batch:
        """The batch evaluation scores: ``collate``'s, unless that draws something at random.

        A type whose training batches are random (masked image modelling's masks) gives
        fixed ones here, so a split scores the same inputs at every evaluation.
        """
        return self.collate(samples)

    @abstractmethod
    def synthetic_samples(
        self, n: int, generator: torch.Generator, *, image_size: int = 64
    ) -> list[Sample]:
        """``n`` random samples with valid, learnable targets over ``synthetic_classes``.

        Tests and benchmarks train on these instead of files; everything random comes from
        ``generator``, so a seed gives the same samples.
        """

    def stratum(self, sample: Sample) -> Hashable:
        """What a class-stratified subset keeps in proportion (e.g. the label)."""
        return ("none",)

    def augment(self, sample: Sample, transform: Transform) -> Sample:
        """``sample`` after one random draw of ``transform`` (training only), targets aligned.

        The default moves the image alone: right for targets about the whole image (a label,
        a label set, none). A type whose targets live on the pixels (a mask, boxes) overrides
        it with :mod:`umedpt.data.augment`'s helpers so they move with the image.
        """
        return augment_image(sample, transform)

    @abstractmethod
    def summarize(self, task: TaskConfig, data: TaskData) -> dict[str, Any]:
        """Plain, JSON-serialisable numbers about this type's targets (e.g. class counts)."""

    @abstractmethod
    def draw(self, ax: Any, sample: Sample, task: TaskConfig) -> None:
        """Draw ``sample``'s targets over its image on matplotlib ``ax`` and title it."""

    def fit(self, task: TaskConfig, train: Sequence[Sample]) -> TaskConfig:
        """``task`` with what the loss derives from the training split (none by default).

        Called once when a task's data is loaded for training or evaluation."""
        return task

    # -- model ------------------------------------------------------------------------
    @abstractmethod
    def build_block(self, in_channels: list[int], config: ModelConfig) -> nn.Module: ...

    @abstractmethod
    def build_head(self, task: TaskConfig, config: ModelConfig) -> nn.Module: ...

    @abstractmethod
    def loss(self, outputs: Any, batch: Batch, task: TaskConfig) -> LossComponents:
        """Named loss components; their sum is normalised so an untrained model scores ~1."""

    @abstractmethod
    def metrics(self, task: TaskConfig) -> TaskMetrics: ...

    def predict(self, outputs: Any, batch: Batch, task: TaskConfig) -> Any:
        """Post-processed predictions (e.g. boxes after NMS); identity by default."""
        return outputs


def log_num_classes(num_classes: int) -> float:
    """ln C, the cross-entropy of a uniform guess over C classes (>= ln 2)."""
    return math.log(max(num_classes, 2))


TASK_TYPES: Registry[TaskType] = Registry("task type")


def register_task_type(task_type: TaskType) -> TaskType:
    """Add a task type under its ``name``; the config then accepts ``type = "<name>"``."""
    return TASK_TYPES.register(task_type.name, task_type)


def get_task_type(name: str) -> TaskType:
    """The registered task type ``name``; RegistryError lists the valid names."""
    return TASK_TYPES.get(name)


def shared_blocks() -> tuple[str, ...]:
    """Every shared block some registered task type trains, sorted."""
    return tuple(sorted({TASK_TYPES.get(name).block for name in TASK_TYPES.names()}))


def block_builder(block: str) -> TaskType:
    """The first registered task type that trains ``block`` (types sharing one build it alike)."""
    for name in TASK_TYPES.names():
        if (task_type := TASK_TYPES.get(name)).block == block:
            return task_type
    raise ValueError(
        f"no task type trains a shared block named '{block}' (blocks: {', '.join(shared_blocks())})"
    )
