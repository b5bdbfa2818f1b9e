"""Endless, seeded batch streams per task: shuffled full batches, or Poisson-sampled for DP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from umedpt.data.samples import Sample
from umedpt.tasks.base import Batch

# Training augmentation of a batch's samples, drawing from the stream's generator
# (umedpt.data.augment.Augmenter); None: the samples as cached.
Augment = Callable[[list[Sample], torch.Generator], list[Sample]]


class TaskStream:
    """Yields batches of one task forever, reshuffling (seeded) at every pass.

    A shorter task simply restarts: the multi-task loop draws one batch of every task
    per step, so tasks are visited equally often whatever their size. The stream's
    position and RNG are part of its state, so a resumed run sees the same batches
    (augmented alike: ``augment`` draws from the same generator).
    """

    def __init__(
        self,
        samples: list[Sample],
        batch_size: int,
        collate: Callable[[list[Sample]], Batch],
        *,
        seed: int,
        augment: Augment | None = None,
    ) -> None:
        if not samples:
            raise ValueError("a task stream needs at least one sample")
        self.samples = samples
        self.batch_size = min(batch_size, len(samples))
        self.collate = collate
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.position = 0
        self.passes = 0

    def next_batch(self) -> Batch:
        # A pass ends when a full batch no longer fits (drop_last): every batch is full, so
        # per-step memory and loss scale are constant.
        if self.position + self.batch_size > len(self.order):
            self.order = torch.randperm(len(self.samples), generator=self.generator)
            self.position = 0
            self.passes += 1
        indices = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return self.collate(self._augmented([self.samples[i] for i in indices.tolist()]))

    def _augmented(self, samples: list[Sample]) -> list[Sample]:
        return samples if self.augment is None else self.augment(samples, self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "order": self.order.clone(),
            "position": torch.tensor(self.position),
            "passes": torch.tensor(self.passes),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "order" not in state:  # saved by a PoissonStream (privacy was on then)
            return
        self.generator.set_state(state["generator"])
        self.order = state["order"].clone()
        self.position = int(state["position"])
        self.passes = int(state["passes"])


class PoissonStream:
    """Poisson-sampled batches of one task, as DP-SGD's accountants assume.

    Every step includes each sample independently with probability ``sample_rate =
    batch_size / n`` (capped at 1), so a batch has ``batch_size`` samples on average and
    may be empty: :meth:`next_batch` then returns None and the private step adds noise
    alone. The draws are never replayed: the generator is seeded from OS entropy by the
    caller and not restored with the state, because a repeated round that drew the same
    batches again would release them twice with fresh noise only, which costs more privacy
    than the ledger (which counts independent draws) records.

    ``augment`` changes each drawn sample before its per-sample gradient: post-processing of
    the sample, so the accounting is the same.
    """

    def __init__(
        self,
        samples: list[Sample],
        batch_size: int,
        collate: Callable[[list[Sample]], Batch],
        *,
        seed: int,
        augment: Augment | None = None,
    ) -> None:
        if not samples:
            raise ValueError("a task stream needs at least one sample")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.samples = samples
        self.sample_rate = min(1.0, batch_size / len(samples))
        self.collate = collate
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)
        self.draws = 0

    @property
    def expected_batch_size(self) -> float:
        """sample_rate * n: what a DP-SGD step divides its noisy sum by."""
        return self.sample_rate * len(self.samples)

    def next_indices(self) -> list[int]:
        """The indices of the next batch (possibly none)."""
        mask = torch.rand(len(self.samples), generator=self.generator) < self.sample_rate
        self.draws += 1
        return mask.nonzero().flatten().tolist()

    def next_batch(self) -> Batch | None:
        """The next Poisson batch; None when no sample was drawn."""
        indices = self.next_indices()
        if not indices:
            return None
        samples = [self.samples[i] for i in indices]
        if self.augment is not None:
            samples = self.augment(samples, self.generator)
        return self.collate(samples)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "draws": torch.tensor(self.draws)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Only the count of draws: the generator is not restored (see the class docstring)."""
        if "draws" in state:  # else saved by a shuffled TaskStream (privacy was off then)
            self.draws = int(state["draws"])
