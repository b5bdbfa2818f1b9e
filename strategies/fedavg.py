"""Per-group FedAvg: the weighted mean of ``GroupedStrategy.reduce_group``."""

from __future__ import annotations

from strategies.base import GroupedStrategy
from strategies.registry import register_strategy


class GroupedFedAvg(GroupedStrategy):
    """Per-group FedAvg."""


register_strategy("fedavg", GroupedFedAvg)
