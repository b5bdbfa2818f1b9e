"""Per-group coordinate-wise median (Yin et al., 2018), robust to a few hostile sites.

Unweighted, as Flower's FedMedian: one site, one vote, whatever its example count.
"""

from __future__ import annotations

import numpy as np

# Flower 1.42.0: the Message-API FedMedian computes its median inline in aggregate_train;
# the importable helper is the legacy API's (list of (arrays, num_examples) pairs).
from flwr.server.strategy.aggregate import aggregate_median
from flwr.serverapp.strategy import FedMedian

from strategies.base import GroupedStrategy
from strategies.registry import register_strategy


class GroupedFedMedian(GroupedStrategy, FedMedian):
    """GroupedStrategy first in the MRO: its per-group ``aggregate_train`` replaces FedMedian's."""

    linear = False  # a per-coordinate median, not a weighted mean

    def reduce_group(
        self, group: str, arrays: list[dict[str, np.ndarray]], weights: list[float]
    ) -> dict[str, np.ndarray]:
        keys = list(arrays[0])
        medians = aggregate_median([([a[k] for k in keys], 1) for a in arrays])
        return dict(zip(keys, medians, strict=True))


register_strategy("fedmedian", GroupedFedMedian)
