"""One task's DP-SGD gradient in the multi-task loop, written into the parameters' ``.grad``.

Per task, jointly over what that task trains (encoder + its shared block + its head):
per-sample gradients, each clipped to ``max_grad_norm``, summed, Gaussian noise of std
``noise_multiplier * max_grad_norm`` added, divided by the expected batch size. The
encoder's gradient then accumulates the noisy gradients of every task, as the non-private
loop accumulates its ordinary ones. The head is inside the private step: a head trained
without noise would leak into the shared weights through the next rounds' gradients.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from umedpt import contract
from umedpt.privacy.noise import noisy_average
from umedpt.privacy.per_sample import ClippedSum, LossFn, PerSampleClipper
from umedpt.tasks.base import Batch


def task_parameters(model: nn.Module, task: str, block: str) -> dict[str, nn.Parameter]:
    """The trainable parameters one task's loss reaches: encoder, its block, its head."""
    prefixes = (f"{contract.ENCODER}.", f"{contract.BLOCKS}.{block}.", f"{contract.HEADS}.{task}.")
    return {
        name: p
        for name, p in model.named_parameters()
        if p.requires_grad and name.startswith(prefixes)
    }


class PrivateTaskGradient:
    """Computes one task's noisy DP-SGD gradient and adds it to the parameters' ``.grad``."""

    def __init__(
        self,
        model: nn.Module,
        task: str,
        block: str,
        loss_fn: LossFn,
        *,
        max_grad_norm: float,
        noise_multiplier: float,
        expected_batch_size: float,
        generator: torch.Generator,
        chunk_size: int = 8,
    ) -> None:
        self.model = model
        self.task = task
        self.params = task_parameters(model, task, block)
        self.clipper = PerSampleClipper(loss_fn, max_grad_norm=max_grad_norm, chunk_size=chunk_size)
        self.max_grad_norm = max_grad_norm
        self.noise_multiplier = noise_multiplier
        self.expected_batch_size = expected_batch_size
        self.generator = generator

    def __call__(self, batch: Batch | None) -> ClippedSum:
        """Accumulate the noisy gradient of ``batch`` (None: an empty Poisson batch)."""
        if batch is not None and batch.size:
            clipped = self.clipper(self.model, (self.task,), self.params, batch)
        else:
            clipped = ClippedSum(
                grads={k: torch.zeros_like(p) for k, p in self.params.items()},
                size=0,
                losses=torch.zeros(0),
                components={},
                norms=torch.zeros(0),
            )
        noisy = noisy_average(
            clipped.grads,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=self.expected_batch_size,
            generator=self.generator,
        )
        _accumulate(self.params, noisy)
        return clipped


def _accumulate(params: Mapping[str, nn.Parameter], grads: Mapping[str, torch.Tensor]) -> None:
    for name, grad in grads.items():
        p = params[name]
        p.grad = grad.to(p.dtype) if p.grad is None else p.grad + grad
