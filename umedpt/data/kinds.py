"""Kinds of target field: how a task type's per-sample targets are stored in the data cache.

A task type declares the targets it puts on a Sample as ``{name: kind}``
(``TaskType.target_fields``). The cache (:mod:`umedpt.data.cache`) stores and loads every
field by its kind alone, so it never knows which task types exist. A target that fits none
of the kinds here is a new :class:`TargetKind` subclass in the task type's own module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


class TargetKind(ABC):
    """Turns one field's values (one per sample of a split) into named tensors, and back.

    ``encode`` names its tensors by suffix (``""`` for the main one); ``decode`` gets the same
    suffixes back and must return ``count`` values or raise ValueError. The cache key holds
    the kind's ``repr``, so a changed declaration never reads a file written under the old one.
    """

    @abstractmethod
    def encode(self, values: Sequence[Any]) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def decode(self, tensors: Mapping[str, torch.Tensor], count: int) -> list[Any]: ...


def join_arrays(join: Callable[..., np.ndarray], values: Sequence[torch.Tensor]) -> torch.Tensor:
    """``np.stack``/``np.concatenate`` of tensors, as one contiguous tensor."""
    # numpy, single-threaded: torch.stack's OpenMP threads can stall for seconds on a busy
    # machine (bench/results/site_cache.md), for what is one memory copy.
    return torch.from_numpy(np.ascontiguousarray(join([v.numpy() for v in values])))


def _counted(values: torch.Tensor, count: int) -> torch.Tensor:
    if len(values) != count:
        raise ValueError(f"{len(values)} values for {count} samples")
    return values


@dataclass(frozen=True)
class Scalar(TargetKind):
    """One number per sample (a class index, a measurement), held as a plain Python number."""

    dtype: torch.dtype = torch.int64

    def encode(self, values: Sequence[Any]) -> dict[str, torch.Tensor]:
        return {"": torch.tensor(list(values), dtype=self.dtype)}

    def decode(self, tensors: Mapping[str, torch.Tensor], count: int) -> list[Any]:
        return _counted(tensors[""], count).tolist()


@dataclass(frozen=True)
class Stacked(TargetKind):
    """A tensor of one shape in every sample (a multi-hot vector, a mask): one (N, ...) tensor."""

    def encode(self, values: Sequence[Any]) -> dict[str, torch.Tensor]:
        return {"": join_arrays(np.stack, values)}

    def decode(self, tensors: Mapping[str, torch.Tensor], count: int) -> list[Any]:
        return list(_counted(tensors[""], count).unbind(0))


@dataclass(frozen=True)
class Ragged(TargetKind):
    """A tensor whose first dimension differs per sample (boxes): one flat tensor + offsets."""

    def encode(self, values: Sequence[Any]) -> dict[str, torch.Tensor]:
        counts = torch.tensor([0] + [len(v) for v in values], dtype=torch.int64)
        return {"": join_arrays(np.concatenate, values), "offsets": counts.cumsum(0)}

    def decode(self, tensors: Mapping[str, torch.Tensor], count: int) -> list[Any]:
        values, offsets = tensors[""], tensors["offsets"].tolist()
        if len(offsets) != count + 1 or offsets[0] != 0 or offsets[-1] != len(values):
            raise ValueError("offsets do not fit the values")
        return [values[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
