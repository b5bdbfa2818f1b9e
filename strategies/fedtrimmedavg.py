"""Per-group coordinate-wise trimmed mean (Yin et al., 2018): ``beta`` cut at each end.

Unweighted, as Flower's FedTrimmedAvg. With n sites carrying a group, ``int(beta * n)``
values are cut at each end per coordinate: a block trained by few sites is trimmed
less (with beta = 0.2, fewer than 5 sites means a plain mean).
"""

from __future__ import annotations

import numpy as np
from flwr.serverapp.strategy import FedTrimmedAvg

# Flower 1.42.0: module-level helper of the Message-API FedTrimmedAvg.
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

from strategies.base import GroupedStrategy
from strategies.registry import register_strategy


class GroupedFedTrimmedAvg(GroupedStrategy, FedTrimmedAvg):
    """GroupedStrategy first in the MRO; FedTrimmedAvg's constructor checks ``beta``."""

    def reduce_group(
        self, group: str, arrays: list[dict[str, np.ndarray]], weights: list[float]
    ) -> dict[str, np.ndarray]:
        return {k: trim_mean(np.stack([a[k] for a in arrays]), self.beta) for k in arrays[0]}


register_strategy("fedtrimmedavg", GroupedFedTrimmedAvg, lambda s: {"beta": s.trim_beta})
