"""Self-supervised task type (``"self-supervised"``): masked image modelling on unlabelled images.

SimMIM-style (Xie et al., CVPR 2022): 60% of an 8 x 8 grid of square patches of each input
image is set to zero (the ImageNet mean colour, in normalised pixels), and a light head
(:class:`umedpt.models.heads.ReconstructionHead`: a 1x1 conv on the stride-32 map and pixel
shuffle) regresses the raw normalised pixels of the masked patches. Loss: L1 on the masked
pixels only. It needs no second view, no negatives and no batch statistics, so it trains at
batch 16 on a CPU, and each sample's loss depends on that sample only (DP-SGD's per-sample
gradients). ``docs/self-supervised.md`` says why this objective and not VICReg or SimSiam.

The head predicts each masked pixel's offset from the mean of the sample's *visible* pixels
(per channel). The loss is the masked L1 divided by the masked L1 of that visible mean, per
sample (floored at ``L1_FLOOR`` for flat images): an untrained head, which predicts offsets
near zero, scores about 1, as UMedPT's normalised losses do.

Shared block: none. The head reads the encoder's deepest map directly through a
parameter-free block (``blocks.self-supervised`` has no weights, so nothing of it is sent
or aggregated); what this type trains in the federation is the encoder. The head stays at
the site like every head.

Masks: :meth:`SelfSupervised.collate` (training) draws them from torch's global RNG, which
the trainer seeds from the run's seed and saves with its state, so a seed gives the same
run. :meth:`SelfSupervised.collate_eval` (validation, test) gives every image a fixed mask
drawn from a generator seeded with a CRC of its pixels: the metric compares rounds on the
same masks, whatever the batch size or order.

Data: ``folder``, ``csv`` and ``npz`` of unlabelled images, and the labelled formats' files
read as images (:mod:`umedpt.data.unlabelled`); ``classes`` is not needed (``min_classes = 0``).

Metrics on the validation split: ``reconstruction_score`` (primary; ``1 - L1 / L1 of the
visible mean`` over all masked pixels: 0 = no better than the mean, 1 = perfect),
``masked_l1`` (normalised pixel units) and ``effective_rank`` of the mean-pooled deepest
features (Roy & Vetterli 2007; a collapsing encoder's rank falls).
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np
import torch
from torch import nn

from umedpt.config import TaskConfig
from umedpt.data.samples import Record, Sample, TaskData
from umedpt.data.stats import describe
from umedpt.data.targets import LoadContext
from umedpt.models.encoder import feature_channels
from umedpt.models.heads import ReconstructionHead, ReconstructionOutputs
from umedpt.models.presets import ModelConfig
from umedpt.tasks.base import (
    Batch,
    LossComponents,
    TaskMetrics,
    TaskType,
    register_task_type,
    stack_images,
)

MASK_RATIO = 0.6  # SimMIM's ratio
MASK_GRID = 8  # masked patches: an 8 x 8 grid (8 px at 64 px, 28 px at 224 px)
# Below this masked L1 of the visible mean (normalised units, ~3 grey levels) an image is
# flat: its loss is divided by the floor instead, so near-constant images cannot blow it up.
L1_FLOOR = 0.05
_STRIDE = 32  # the encoder's deepest stride, which the head upsamples from


def draw_masks(count: int, image_size: int, generator: torch.Generator | None) -> torch.Tensor:
    """(count, 1, S, S) float masks: 1 on ``MASK_RATIO`` of the ``MASK_GRID`` x ``MASK_GRID``
    patches, chosen at random (from ``generator``, or torch's global RNG when None)."""
    if image_size % MASK_GRID:
        raise ValueError(f"image_size must be a multiple of {MASK_GRID}, got {image_size}")
    cells = MASK_GRID * MASK_GRID
    ranks = torch.rand(count, cells, generator=generator).argsort(dim=1).argsort(dim=1)
    grid = (ranks < round(MASK_RATIO * cells)).float().view(count, 1, MASK_GRID, MASK_GRID)
    patch = image_size // MASK_GRID
    return grid.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)


def fixed_mask(sample: Sample) -> torch.Tensor:
    """(1, 1, S, S): the mask evaluation always uses for ``sample``, seeded by its pixels."""
    seed = zlib.crc32(sample.image.contiguous().numpy().tobytes())
    return draw_masks(1, sample.image.shape[-1], torch.Generator().manual_seed(seed))


def masked_batch(samples: list[Sample], masks: torch.Tensor) -> Batch:
    """Images with the masked patches zeroed; targets: the unmasked pixels and the mask."""
    pixels = stack_images(samples)  # (B, 3, S, S), normalised
    return Batch(pixels * (1 - masks), {"pixels": pixels, "mask": masks})


def visible_mean(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 3, 1, 1): each sample's per-channel mean over its visible (unmasked) pixels."""
    visible = 1 - mask
    return (pixels * visible).sum((2, 3), keepdim=True) / visible.sum(
        (2, 3), keepdim=True
    ).clamp_min(1)


def masked_errors(
    outputs: ReconstructionOutputs, batch: Batch
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample (B,): mean |error| over the masked pixels of the reconstruction, and of
    predicting the sample's visible mean. Each uses that sample's pixels only."""
    pixels = batch.targets["pixels"].float()  # (B, 3, S, S)
    mask = batch.targets["mask"].float()  # (B, 1, S, S)
    mean = visible_mean(pixels, mask)  # (B, 3, 1, 1)
    count = (mask.sum((1, 2, 3)) * pixels.shape[1]).clamp_min(1)  # masked values per sample
    reconstruction = outputs.reconstruction.float() + mean
    l1 = ((reconstruction - pixels).abs() * mask).sum((1, 2, 3)) / count
    baseline = ((mean - pixels).abs() * mask).sum((1, 2, 3)) / count
    return l1, baseline


def effective_rank(features: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of the centred (N, C) features."""
    if features.shape[0] < 2:
        return math.nan
    singular = torch.linalg.svdvals(features.double() - features.double().mean(0))
    total = singular.sum()
    if total <= 0:
        return 0.0  # every feature vector is the same: fully collapsed
    p = singular / total
    return float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))


class ReconstructionMetrics(TaskMetrics):
    """Reconstruction score and masked L1 over a split, and the pooled features' rank."""

    def __init__(self) -> None:
        self.l1 = 0.0
        self.baseline = 0.0
        self.count = 0
        self.pooled: list[torch.Tensor] = []

    def update(self, outputs: ReconstructionOutputs, batch: Batch) -> None:
        with torch.no_grad():
            l1, baseline = masked_errors(outputs, batch)
        self.l1 += float(l1.sum())
        self.baseline += float(baseline.sum())
        self.count += batch.size
        self.pooled.append(outputs.pooled.detach().float().cpu())

    def compute(self) -> dict[str, float]:
        if not self.count:
            return {"reconstruction_score": math.nan, "masked_l1": math.nan}
        score = 1 - self.l1 / self.baseline if self.baseline > 0 else math.nan
        return {
            "reconstruction_score": score,
            "masked_l1": self.l1 / self.count,
            "effective_rank": effective_rank(torch.cat(self.pooled)),
        }


class SelfSupervised(TaskType):
    """Unlabelled images; loss component ``masked_l1``. No targets are read from the data."""

    name = "self-supervised"
    primary_metric = "reconstruction_score"
    min_classes = 0  # no classes: ``classes`` may be left out of the site file
    target_fields: dict[str, Any] = {}
    synthetic_classes: tuple[str, ...] = ()

    def load_targets(self, record: Record, sample: Sample, context: LoadContext) -> None:
        """Nothing to load: a labelled file read as unlabelled keeps only its image."""

    def collate(self, samples: list[Sample]) -> Batch:
        """Training batches: fresh random masks from torch's global RNG (seeded by the trainer)."""
        size = samples[0].image.shape[-1]
        return masked_batch(samples, draw_masks(len(samples), size, None))

    def collate_eval(self, samples: list[Sample]) -> Batch:
        """Evaluation batches: each image's fixed mask (:func:`fixed_mask`)."""
        return masked_batch(samples, torch.cat([fixed_mask(s) for s in samples]))

    def synthetic_samples(
        self, n: int, generator: torch.Generator, *, image_size: int = 64
    ) -> list[Sample]:
        """Smooth shading plus a bright disc and mild noise: masked patches are predictable
        from their surroundings, so reconstruction is learnable."""
        samples = []
        axis = torch.arange(image_size, dtype=torch.float32) / image_size
        yy, xx = torch.meshgrid(axis, axis, indexing="ij")
        for i in range(n):
            a, b, cx, cy, r = torch.rand(5, generator=generator).tolist()
            image = 60 + 60 * (a * xx + b * yy)
            disc = (xx - 0.2 - 0.6 * cx) ** 2 + (yy - 0.2 - 0.6 * cy) ** 2 <= (0.1 + 0.1 * r) ** 2
            image = image + 110 * disc + 4 * torch.randn(image.shape, generator=generator)
            pixels = image.clamp(0, 255).round().to(torch.uint8).expand(3, -1, -1).clone()
            samples.append(Sample(pixels, f"{self.name}-{i}", {}))
        return samples

    def summarize(self, task: TaskConfig, data: TaskData) -> dict[str, Any]:
        samples = [s for split in data.splits.values() for s in split]
        stds = [float(s.image.float().std()) for s in samples]
        return {
            "masking": {
                "ratio": MASK_RATIO,
                "grid": MASK_GRID,
                "patch_pixels": task.image_size // MASK_GRID,
            },
            "grey_level": describe([float(s.image.float().mean()) for s in samples]),
            # near-constant images teach nothing and are scored against L1_FLOOR
            "flat_images": sum(std < 2.0 for std in stds),
        }

    def draw(self, ax: Any, sample: Sample, task: TaskConfig) -> None:
        mask = fixed_mask(sample)[0, 0].numpy()
        ax.imshow(
            np.ma.masked_where(mask == 0, mask),
            cmap="autumn",
            alpha=0.35,
            vmin=0,
            vmax=1,
            interpolation="nearest",
        )
        ax.set_title(f"masked {MASK_RATIO:.0%} (validation mask)", fontsize=8)

    def build_block(self, in_channels: list[int], config: ModelConfig) -> nn.Module:
        return nn.Identity()  # parameter-free: the head reads the encoder's maps

    def build_head(self, task: TaskConfig, config: ModelConfig) -> nn.Module:
        return ReconstructionHead(feature_channels(config)[-1], _STRIDE)

    def loss(
        self, outputs: ReconstructionOutputs, batch: Batch, task: TaskConfig
    ) -> LossComponents:
        l1, baseline = masked_errors(outputs, batch)
        return {"masked_l1": (l1 / baseline.clamp_min(L1_FLOOR)).mean()}

    def metrics(self, task: TaskConfig) -> TaskMetrics:
        return ReconstructionMetrics()

    def predict(self, outputs: ReconstructionOutputs, batch: Batch, task: TaskConfig) -> Any:
        """The reconstructed normalised images: the visible pixels, masked ones predicted."""
        pixels, mask = batch.targets["pixels"].float(), batch.targets["mask"].float()
        guess = outputs.reconstruction.float() + visible_mean(pixels, mask)
        return pixels * (1 - mask) + guess * mask


register_task_type(SelfSupervised())
