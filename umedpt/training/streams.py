"""Endless, seeded batch streams per task, and the round-robin order over tasks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from umedpt.data.samples import Sample
from umedpt.tasks.base import Batch


class TaskStream:
    """Yields batches of one task forever, reshuffling (seeded) at every pass.

    A shorter task simply restarts: the multi-task loop draws one batch of every task
    per step, so tasks are visited equally often whatever their size. The stream's
    position and RNG are part of its state, so a resumed run sees the same batches.
    """

    def __init__(
        self,
        samples: list[Sample],
        batch_size: int,
        collate: Callable[[list[Sample]], Batch],
        *,
        seed: int,
    ) -> None:
        if not samples:
            raise ValueError("a task stream needs at least one sample")
        self.samples = samples
        self.batch_size = min(batch_size, len(samples))
        self.collate = collate
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
        return self.collate([self.samples[i] for i in indices.tolist()])

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "order": self.order.clone(),
            "position": torch.tensor(self.position),
            "passes": torch.tensor(self.passes),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.order = state["order"].clone()
        self.position = int(state["position"])
        self.passes = int(state["passes"])
