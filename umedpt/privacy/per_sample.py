"""Per-sample gradients with ``torch.func``, clipped jointly per sample and summed.

Opacus' grad samplers refuse timm's Swin (a buffer in its attention, and attention windows
folded into the batch dimension), so per-sample gradients are computed for the whole
function "sample -> loss" with ``vmap(grad_and_value(...))`` over ``functional_call``.
Samples are processed in chunks: each chunk's per-sample gradients are clipped and summed
right away, so memory holds ``chunk_size`` gradient copies, never one per sample of the
batch. ``grad_and_value`` returns each sample's loss from the same forward pass.

Batches whose targets are per-sample lists (detection boxes, whose matching has
data-dependent shapes) and losses that ``vmap`` rejects (data-dependent ops such as
``F.one_hot``; the segmentation loss avoids it for this reason) take a per-sample loop
instead: the same clipping, slower. :class:`PerSampleClipper` tries ``vmap`` once per task
and remembers the outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from umedpt.tasks.base import Batch

# (model outputs, one-sample batch) -> named loss components of that sample
LossFn = Callable[[Any, Batch], Mapping[str, torch.Tensor]]


@dataclass
class ClippedSum:
    """The sum over a batch of per-sample gradients, each clipped to ``max_grad_norm``."""

    grads: dict[str, torch.Tensor]  # parameter name -> summed clipped gradient
    size: int  # samples in the batch (0 for an empty Poisson batch)
    losses: torch.Tensor  # (size,) each sample's total loss
    components: dict[str, torch.Tensor]  # name -> (size,) each sample's loss component
    norms: torch.Tensor  # (size,) each sample's gradient norm before clipping


def clipped_grad_sum(
    model: nn.Module,
    forward_args: tuple[Any, ...],
    params: Mapping[str, torch.Tensor],
    batch: Batch,
    loss_fn: LossFn,
    *,
    max_grad_norm: float,
    chunk_size: int = 8,
    vectorize: bool = True,
) -> ClippedSum:
    """Sum of per-sample gradients of ``params``, each clipped jointly over all of them.

    ``model(batch.images, *forward_args)`` gives the outputs ``loss_fn`` scores; parameters
    not in ``params`` (and all buffers) are used as they are and get no gradient.
    ``vectorize=False`` (or list targets) computes the samples one by one.
    """
    if max_grad_norm <= 0:
        raise ValueError(f"max_grad_norm must be positive, got {max_grad_norm}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    detached = {k: v.detach() for k, v in params.items()}
    sums = {k: torch.zeros_like(v) for k, v in detached.items()}
    size = batch.size
    tensors = {k: v for k, v in batch.targets.items() if isinstance(v, torch.Tensor)}
    lists = {k: v for k, v in batch.targets.items() if not isinstance(v, torch.Tensor)}

    def sample_loss(
        p: dict[str, torch.Tensor],
        image: torch.Tensor,
        targets: dict[str, torch.Tensor],
        listed: dict[str, Any],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        one = Batch(
            image.unsqueeze(0),
            {
                **{k: v.unsqueeze(0) for k, v in targets.items()},
                **{k: [v] for k, v in listed.items()},
            },
        )
        outputs = functional_call(model, p, (one.images, *forward_args))
        components = loss_fn(outputs, one)
        total = torch.stack([c.float() for c in components.values()]).sum()
        return total, {k: c.detach().float() for k, c in components.items()}

    per_sample = grad_and_value(sample_loss, has_aux=True)
    losses, norms, parts = [], [], []
    for start in range(0, size, chunk_size):
        stop = min(start + chunk_size, size)
        images = batch.images[start:stop]
        chunk_targets = {k: v[start:stop] for k, v in tensors.items()}
        if lists or not vectorize:  # per-sample loop
            results = [
                per_sample(
                    detached,
                    images[i],
                    {k: v[i] for k, v in chunk_targets.items()},
                    {k: v[start + i] for k, v in lists.items()},
                )
                for i in range(stop - start)
            ]
            grads = {k: torch.stack([r[0][k] for r in results]) for k in detached}
            loss = torch.stack([r[1][0] for r in results])
            aux = {k: torch.stack([r[1][1][k] for r in results]) for k in results[0][1][1]}
        else:
            batched = vmap(per_sample, in_dims=(None, 0, 0, None), randomness="different")
            grads, (loss, aux) = batched(detached, images, chunk_targets, {})
        # Joint norm over every parameter, per sample: (k,)
        norm = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads.values()]).sum(0).sqrt()
        factor = (max_grad_norm / (norm + 1e-6)).clamp(max=1.0)
        for k, g in grads.items():
            sums[k] += torch.tensordot(factor.to(g.dtype), g, dims=1)
        losses.append(loss.detach())
        norms.append(norm.detach())
        parts.append(aux)
    empty = torch.zeros(0)
    return ClippedSum(
        grads=sums,
        size=size,
        losses=torch.cat(losses) if losses else empty,
        components={k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {},
        norms=torch.cat(norms) if norms else empty,
    )


class PerSampleClipper:
    """:func:`clipped_grad_sum` for one task, vectorised where the task's loss allows it."""

    def __init__(self, loss_fn: LossFn, *, max_grad_norm: float, chunk_size: int = 8) -> None:
        self.loss_fn = loss_fn
        self.max_grad_norm = max_grad_norm
        self.chunk_size = chunk_size
        self.vectorize: bool | None = None  # unknown until the first batch

    def __call__(
        self,
        model: nn.Module,
        forward_args: tuple[Any, ...],
        params: Mapping[str, torch.Tensor],
        batch: Batch,
    ) -> ClippedSum:
        def run(vectorize: bool) -> ClippedSum:
            return clipped_grad_sum(
                model,
                forward_args,
                params,
                batch,
                self.loss_fn,
                max_grad_norm=self.max_grad_norm,
                chunk_size=self.chunk_size,
                vectorize=vectorize,
            )

        if self.vectorize is None and batch.size:
            try:
                result = run(True)
                self.vectorize = True
                return result
            except RuntimeError as exc:  # vmap rejects the loss: fall back to the loop
                if "vmap" not in str(exc):
                    raise
                self.vectorize = False
        return run(bool(self.vectorize))
