"""Server-side aggregation over the parameter-group contract, on Flower's strategies.

One extension point per job: a new rule overrides ``GroupedStrategy.reduce_group`` in its
own module and registers itself there (``register_strategy``); it is listed below only
so that importing ``strategies`` registers it.
"""

from strategies.aggregation import weighted_mean
from strategies.base import GroupedStrategy
from strategies.fedadam import GroupedFedAdam
from strategies.fedavg import GroupedFedAvg
from strategies.fedmedian import GroupedFedMedian
from strategies.fedprox import GroupedFedProx
from strategies.fedtrimmedavg import GroupedFedTrimmedAvg
from strategies.metrics import merged_metrics
from strategies.records import RoundFailedError, RoundRecord, arrays_nbytes
from strategies.registry import build_strategy, register_strategy, strategy_names
from strategies.sites import SiteInfo

__all__ = [
    "GroupedFedAdam",
    "GroupedFedAvg",
    "GroupedFedMedian",
    "GroupedFedProx",
    "GroupedFedTrimmedAvg",
    "GroupedStrategy",
    "RoundFailedError",
    "RoundRecord",
    "SiteInfo",
    "arrays_nbytes",
    "build_strategy",
    "merged_metrics",
    "register_strategy",
    "strategy_names",
    "weighted_mean",
]
