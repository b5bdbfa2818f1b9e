"""Per-group coordinate-wise trimmed mean (Yin et al., 2018): ``beta`` cut at each end.

Unweighted, as Flower's FedTrimmedAvg. With n sites carrying a group, ``int(beta * n)``
values are cut at each end per coordinate: a block trained by few sites is trimmed
less (with beta = 0.2, fewer than 5 sites means a plain mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.serverapp.strategy import FedTrimmedAvg

# Flower 1.42.0: module-level helper of the Message-API FedTrimmedAvg.
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

from federation.fields import setting
from strategies.base import GroupedStrategy
from strategies.registry import register_strategy


@dataclass(frozen=True)
class TrimmedMeanOptions:
    """The trimmed mean's option: the fraction cut at each end, per coordinate."""

    trim_beta: float = setting(0.2, "Trimmed mean: fraction cut at each end, per coordinate.")

    def __post_init__(self) -> None:
        if not 0 <= self.trim_beta < 0.5:
            raise ValueError(f"trim-beta must be in [0, 0.5), got {self.trim_beta}")

    def rule_args(self) -> dict[str, Any]:
        return {"beta": self.trim_beta}


class GroupedFedTrimmedAvg(GroupedStrategy, FedTrimmedAvg):
    """GroupedStrategy first in the MRO; FedTrimmedAvg's constructor checks ``beta``."""

    linear = False  # a per-coordinate trimmed mean, not a weighted mean

    def reduce_group(
        self, group: str, arrays: list[dict[str, np.ndarray]], weights: list[float]
    ) -> dict[str, np.ndarray]:
        return {k: trim_mean(np.stack([a[k] for a in arrays]), self.beta) for k in arrays[0]}


register_strategy("fedtrimmedavg", GroupedFedTrimmedAvg, TrimmedMeanOptions)
