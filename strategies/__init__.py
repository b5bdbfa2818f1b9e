"""Server-side aggregation over the parameter-group contract, on Flower's strategies.

One extension point per job: a new rule overrides ``GroupedStrategy.reduce_group`` in its
own module, declares its options there, and registers itself there (``register_strategy``);
it is listed below only so that importing ``strategies`` registers it. Secure aggregation
and client-level DP wrap a linear rule (``SecureAggregation``, ``ClientLevelDP``).
"""

from strategies.aggregation import weighted_mean
from strategies.base import GroupedStrategy
from strategies.central_dp import ClientDPConfig, ClientLevelDP
from strategies.fedadam import GroupedFedAdam
from strategies.fedavg import GroupedFedAvg
from strategies.fedmedian import GroupedFedMedian
from strategies.fedprox import GroupedFedProx
from strategies.fedtrimmedavg import GroupedFedTrimmedAvg
from strategies.metrics import merged_metrics
from strategies.records import RoundFailedError, RoundRecord, arrays_nbytes
from strategies.registry import (
    register_strategy,
    rule_option_fields,
    strategy_entry,
    strategy_names,
)
from strategies.secure_aggregation import SecAggConfig, SecureAggregation
from strategies.sites import SiteInfo
from strategies.wrapper import StrategyWrapper

__all__ = [
    "ClientDPConfig",
    "ClientLevelDP",
    "SecAggConfig",
    "SecureAggregation",
    "StrategyWrapper",
    "rule_option_fields",
    "strategy_entry",
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
    "merged_metrics",
    "register_strategy",
    "strategy_names",
    "weighted_mean",
]
