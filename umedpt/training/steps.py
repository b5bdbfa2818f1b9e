"""One task's part of a multi-task step: a batch, its loss, and its gradient in ``.grad``.

The trainer (:mod:`umedpt.training.trainer`) calls one step object per task, then checks
the loss and steps the task's head; the shared optimizer steps once every task has added
its gradient. Two kinds, one interface (:class:`TaskGradientStep`):

- :class:`PlainStep`: the next shuffled batch, forward, loss, ``backward()``
- :class:`PrivateStep`: DP-SGD: a Poisson-sampled batch whose gradient (encoder + block +
  head) is clipped per sample, noised and averaged by :class:`umedpt.privacy.PrivateTaskGradient`
"""

from __future__ import annotations

import contextlib
import functools
import math
import secrets
from collections.abc import Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import torch

from umedpt.model import UMedPTModel
from umedpt.privacy import DPSGDConfig, PrivateTaskGradient, check_private_modules
from umedpt.privacy.noise import secret_generator
from umedpt.tasks import total_loss
from umedpt.training.streams import PoissonStream, TaskStream

if TYPE_CHECKING:
    from umedpt.training.trainer import TaskRun


class TaskStep(NamedTuple):
    """One task's part of one step: its loss, batch size and named loss components."""

    loss: float  # the sum of the components (NaN for an empty Poisson batch)
    size: int
    components: dict[str, float]


class TaskGradientStep(Protocol):
    """Adds one batch's gradient of ``task`` to the parameters' ``.grad``; returns its loss."""

    streams: MutableMapping[str, Any]  # task -> its batch stream (part of the trainer's state)

    def __call__(self, task: TaskRun) -> TaskStep: ...


def autocast(device: torch.device, mixed_precision: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when ``mixed_precision``; otherwise nothing."""
    if device.type == "cuda" and mixed_precision:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class PlainStep:
    """The ordinary gradient: the task's next shuffled batch, forward, loss, backward.

    Each task's loss is backpropagated right after its forward pass, so only one task's
    activations exist at a time; the shared weights' gradients accumulate across tasks.
    """

    def __init__(
        self,
        model: UMedPTModel,
        streams: MutableMapping[str, TaskStream],
        device: torch.device,
        *,
        mixed_precision: bool,
    ) -> None:
        self.model = model
        self.streams = streams
        self.device = device
        self.mixed_precision = mixed_precision

    def __call__(self, task: TaskRun) -> TaskStep:
        batch = self.streams[task.name].next_batch().to(self.device)
        with autocast(self.device, self.mixed_precision):
            outputs = self.model(batch.images, task.name)
            components = task.task_type.loss(outputs, batch, task.config)
            loss = total_loss(components)
        # One host sync per task for the total and every component.
        values = torch.stack([loss.detach(), *(c.detach().float() for c in components.values())])
        value, *rest = values.tolist()
        loss.backward()  # frees this task's graph before the next task's forward
        return TaskStep(value, batch.size, dict(zip(components, rest)))


class PrivateStep:
    """DP-SGD: Poisson batches, and a private gradient per task.

    Refuses modules DP-SGD cannot train (:func:`umedpt.privacy.check_private_modules`) in
    the encoder and in the blocks and heads of ``tasks``. Sampling and noise draw from the
    OS's entropy, not the run's seed (which the server knows).
    """

    def __init__(
        self,
        model: UMedPTModel,
        tasks: Sequence[TaskRun],
        privacy: DPSGDConfig,
        device: torch.device,
        *,
        mixed_precision: bool,
    ) -> None:
        if weighted := [t.name for t in tasks if t.config.class_weights]:
            # The site file refuses it too (umedpt.config): a run built another way must not.
            raise ValueError(
                f"tasks {weighted}: class weights depend on every training label, which "
                "DP-SGD's accounting does not cover"
            )
        used_blocks = sorted({model.task_blocks[t.name] for t in tasks})
        check_private_modules(
            [("encoder", model.encoder)]
            + [(f"blocks.{b}", model.blocks[b]) for b in used_blocks]
            + [(f"heads.{t.name}", model.heads[t.name]) for t in tasks]
        )
        missing = [t.name for t in tasks if t.name not in privacy.noise_multipliers]
        if missing:
            raise ValueError(f"the privacy config has no noise multiplier for task(s) {missing}")
        self.device = device
        self.mixed_precision = mixed_precision
        generator = secret_generator(device)
        self.streams: dict[str, PoissonStream] = {}
        self.gradients: dict[str, PrivateTaskGradient] = {}
        for t in tasks:
            stream = PoissonStream(
                t.data["train"],
                t.config.batch_size,
                t.task_type.collate,
                seed=secrets.randbits(63),
                augment=t.augmenter(),
            )
            self.streams[t.name] = stream
            self.gradients[t.name] = PrivateTaskGradient(
                model,
                t.name,
                model.task_blocks[t.name],
                functools.partial(_task_loss, t),
                max_grad_norm=privacy.max_grad_norm,
                noise_multiplier=privacy.noise_multipliers[t.name],
                expected_batch_size=stream.expected_batch_size,
                generator=generator,
                chunk_size=privacy.chunk_size,
            )

    def __call__(self, task: TaskRun) -> TaskStep:
        batch = self.streams[task.name].next_batch()
        with autocast(self.device, self.mixed_precision):
            clipped = self.gradients[task.name](None if batch is None else batch.to(self.device))
        if not clipped.size:  # an empty Poisson batch: noise only, no loss to report
            return TaskStep(math.nan, 0, {})
        parts = {k: float(v.mean()) for k, v in clipped.components.items()}
        return TaskStep(float(clipped.losses.mean()), clipped.size, parts)


def _task_loss(task: TaskRun, outputs: Any, batch: Any) -> Mapping[str, torch.Tensor]:
    return task.task_type.loss(outputs, batch, task.config)
