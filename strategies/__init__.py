"""Server-side aggregation over the parameter-group contract, on Flower's strategies."""

from strategies.grouped import (
    STRATEGIES,
    GroupedFedAdam,
    GroupedFedAvg,
    GroupedFedProx,
    GroupedStrategy,
    SiteInfo,
    build_strategy,
)

__all__ = [
    "STRATEGIES",
    "GroupedFedAdam",
    "GroupedFedAvg",
    "GroupedFedProx",
    "GroupedStrategy",
    "SiteInfo",
    "build_strategy",
]
