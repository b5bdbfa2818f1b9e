"""One evaluation cell: a fresh neck and head on an encoder, trained on a subset, scored once.

Image-level tasks (classification, multi-label) get a probe on the mean-pooled features of
all four pyramid stages (far more stable than the last stage alone), each feature
standardised over the target's training images (:class:`PooledPyramid`); pixel and box tasks
get their task type's own fresh block (the U-Net decoder, the FPN and towers). In frozen
mode the encoder's features are computed once per split and reused by every cell
(:class:`FeatureBank`); in finetune mode the encoder trains too, at a lower learning rate.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from umedpt.config import TaskConfig
from umedpt.data.samples import Sample
from umedpt.evaluation.protocol import CellResult, EvalProtocol
from umedpt.models.encoder import Encoder
from umedpt.models.presets import ModelConfig
from umedpt.tasks import get_task_type, total_loss

Features = list[torch.Tensor]
BANK_LIMIT_BYTES = 3 * 2**30  # above this, frozen cells recompute features instead
STANDARDISE_EPS = 1e-5  # as BatchNorm's: a constant feature stays finite


class PooledPyramid(nn.Module):
    """Mean-pools every pyramid stage, concatenates them and standardises each feature: a
    probe's image vector.

    Why standardised: pretrained encoders spread a new site's images over few directions with
    most of the variance (``experiments/results/feature-rank-six-sites.md``), and a linear
    head trained for a few hundred steps fits those and not the small ones that separate the
    new classes; per-feature standardisation (as linear probes in the literature do, e.g.
    MAE's BatchNorm without affine) puts every direction on one scale, for every encoder
    alike. The mean and sd are :meth:`fit` on the target's training images, without labels:
    the same for every fraction of the labels, unlike a subset's or a batch's.
    """

    def __init__(self, in_channels: Sequence[int]) -> None:
        super().__init__()
        dim = sum(in_channels)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("inv_std", torch.ones(dim))
        self.fitted = False  # CellTrainer.run fits an unfitted one: never raw features

    @staticmethod
    def pool(features: Features) -> torch.Tensor:
        return torch.cat([f.float().mean(dim=(2, 3)) for f in features], dim=1)

    def fit(self, pooled: torch.Tensor) -> None:
        """Standardise with the statistics of ``pooled`` (N, C): :meth:`pool` of the images."""
        self.mean.copy_(pooled.mean(dim=0))
        self.inv_std.copy_(torch.rsqrt(pooled.var(dim=0, unbiased=False) + STANDARDISE_EPS))
        self.fitted = True

    def forward(self, features: Features) -> torch.Tensor:
        return (self.pool(features) - self.mean) * self.inv_std


def pooled_training_features(
    encoder: Encoder,
    task: TaskConfig,
    samples: Sequence[Sample],
    device: torch.device,
    bank: FeatureBank | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """:meth:`PooledPyramid.pool` of every training image, from ``bank`` when there is one;
    the encoder as it is before a cell trains it (eval mode)."""
    if bank is not None:
        return PooledPyramid.pool(bank.features["train"])
    collate = get_task_type(task.type).collate_eval
    encoder.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            images = collate(list(samples[start : start + batch_size])).images.to(device)
            chunks.append(PooledPyramid.pool(encoder(images)))
    return torch.cat(chunks)


class Probe(nn.Module):
    """Encoder -> fresh neck -> fresh head for the target task."""

    def __init__(self, encoder: Encoder, task: TaskConfig, config: ModelConfig, seed: int):
        super().__init__()
        task_type = get_task_type(task.type)
        self.encoder = encoder
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if task_type.image_level:
                block: nn.Module = PooledPyramid(encoder.out_channels)
                config = replace(config, image_dim=sum(encoder.out_channels))
            else:
                block = task_type.build_block(encoder.out_channels, config)
            self.neck = block
            self.head = task_type.build_head(task, config)

    def decode(self, features: Features) -> Any:
        return self.head(self.neck(features))

    def forward(self, images: torch.Tensor) -> Any:
        return self.decode(self.encoder(images))


class FeatureBank:
    """The frozen encoder's feature maps of every sample of some splits, computed once."""

    def __init__(self, features: dict[str, Features]) -> None:
        self.features = features

    @classmethod
    def build(
        cls,
        encoder: Encoder,
        task: TaskConfig,
        splits: dict[str, list[Sample]],
        device: torch.device,
        batch_size: int = 64,
    ) -> FeatureBank | None:
        """None when the maps of all samples would not fit in ``BANK_LIMIT_BYTES``."""
        total = sum(len(s) for s in splits.values())
        per_image = _feature_bytes(encoder, task.image_size, device)
        if total * per_image > BANK_LIMIT_BYTES:
            return None
        collate = get_task_type(task.type).collate_eval  # fixed inputs: cells reuse them
        encoder.eval()
        features: dict[str, Features] = {}
        with torch.no_grad():
            for split, samples in splits.items():
                chunks: list[Features] = []
                for start in range(0, len(samples), batch_size):
                    images = collate(samples[start : start + batch_size]).images.to(device)
                    chunks.append([f.float() for f in encoder(images)])
                features[split] = [torch.cat(level) for level in zip(*chunks)] if chunks else []
        return cls(features)

    def take(self, split: str, indices: Sequence[int]) -> Features:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return [level[index.to(level.device)] for level in self.features[split]]


def _feature_bytes(encoder: Encoder, image_size: int, device: torch.device) -> int:
    with torch.no_grad():
        encoder.eval()
        probe = torch.zeros(1, 3, image_size, image_size, device=device)
        return sum(f.numel() * 4 for f in encoder(probe))


class CellTrainer:
    """Trains and scores one (encoder, mode, fraction, seed) cell under the protocol."""

    def __init__(
        self,
        task: TaskConfig,
        protocol: EvalProtocol,
        metric: str,
        device: torch.device,
        eval_batch_size: int = 64,
    ) -> None:
        self.task = task
        self.task_type = get_task_type(task.type)
        self.protocol = protocol
        self.metric = metric
        self.device = device
        self.eval_batch_size = eval_batch_size

    def run(
        self,
        probe: Probe,
        mode: str,
        splits: dict[str, list[Sample]],
        subset: Sequence[int],
        *,
        seed: int,
        fraction: float,
        encoder_label: str,
        bank: FeatureBank | None = None,
    ) -> CellResult:
        """Train on ``splits['train'][subset]``, select on val, score test once."""
        start = time.perf_counter()
        probe.to(self.device)
        if isinstance(probe.neck, PooledPyramid) and not probe.neck.fitted:
            train = splits["train"]
            probe.neck.fit(
                pooled_training_features(probe.encoder, self.task, train, self.device, bank)
            )
        frozen = mode == "frozen"
        probe.encoder.requires_grad_(not frozen)
        batch_size = self.protocol.batch_size or self.task.batch_size
        steps = self.protocol.steps_for(len(subset), batch_size)
        optimizer = self._optimizer(probe, frozen)
        warmup = max(1, steps // 20)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: (
                (s + 1) / warmup
                if s < warmup
                else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
            ),
        )
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # dropout
        batches = _epochs(list(subset), batch_size, generator)
        eval_points = set(self.protocol.eval_points(steps))
        trainable = probe if not frozen else nn.ModuleList([probe.neck, probe.head])
        best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        for step in range(1, steps + 1):
            probe.neck.train()
            probe.head.train()
            probe.encoder.train(not frozen)
            indices = next(batches)
            loss = self._loss(probe, splits["train"], indices, bank)
            loss.backward()
            nn.utils.clip_grad_norm_([p for p in probe.parameters() if p.requires_grad], 5.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if step in eval_points:
                score = self.score(probe, splits["val"], "val", bank).get(self.metric, math.nan)
                if best is None or _better(score, best[0]):
                    best = (score, step, copy.deepcopy(trainable.state_dict()))
        assert best is not None  # the last step is always an eval point
        trainable.load_state_dict(best[2])
        test = self.score(probe, splits["test"], "test", bank)
        return CellResult(
            encoder=encoder_label,
            mode=mode,
            fraction=float(fraction),
            seed=seed,
            subset_size=len(subset),
            steps=steps,
            best_step=best[1],
            val_metric=float(best[0]),
            metrics=test,
            seconds=time.perf_counter() - start,
        )

    def _optimizer(self, probe: Probe, frozen: bool) -> torch.optim.Optimizer:
        p = self.protocol
        groups: list[dict[str, Any]] = [
            {"params": [*probe.neck.parameters(), *probe.head.parameters()], "lr": p.head_lr}
        ]
        if not frozen:
            groups.append({"params": list(probe.encoder.parameters()), "lr": p.encoder_lr})
        return torch.optim.AdamW(groups, weight_decay=p.weight_decay)

    def _loss(
        self, probe: Probe, samples: list[Sample], indices: list[int], bank: FeatureBank | None
    ) -> torch.Tensor:
        # a bank's features came from ``collate_eval``: the targets must be of the same batch
        collate = self.task_type.collate_eval if bank is not None else self.task_type.collate
        batch = collate([samples[i] for i in indices]).to(self.device)
        if bank is not None:
            outputs = probe.decode(bank.take("train", indices))
        else:
            outputs = probe(batch.images)
        loss = total_loss(self.task_type.loss(outputs, batch, self.task))
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"task '{self.task.name}': the probe's loss became {loss}")
        return loss

    @torch.no_grad()
    def score(
        self, probe: Probe, samples: list[Sample], split: str, bank: FeatureBank | None
    ) -> dict[str, float]:
        """Every metric of the task type on ``samples`` (the whole split)."""
        probe.eval()
        metrics = self.task_type.metrics(self.task)
        size = self.eval_batch_size
        for start in range(0, len(samples), size):
            indices = list(range(start, min(start + size, len(samples))))
            batch = self.task_type.collate_eval([samples[i] for i in indices]).to(self.device)
            if bank is not None:
                outputs = probe.decode(bank.take(split, indices))
            else:
                outputs = probe(batch.images)
            metrics.update(outputs, batch)
        return metrics.compute()


def _epochs(indices: list[int], batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Endless batches: each pass over ``indices`` in a fresh seeded order."""
    size = min(batch_size, len(indices))
    while True:
        order = torch.randperm(len(indices), generator=generator).tolist()
        for start in range(0, len(order) - size + 1, size):
            yield [indices[i] for i in order[start : start + size]]


def _better(score: float, best: float) -> bool:
    if math.isnan(best):
        return not math.isnan(score)
    return not math.isnan(score) and score > best
