"""``StrategyWrapper``: a strategy around a linear rule, as Flower's DP wrappers wrap one.

Secure aggregation (:mod:`strategies.secure_aggregation`) and client-level DP
(:mod:`strategies.central_dp`) change how a round's train replies become the new global
arrays, but not what the rule does around that (FedProx's mu in the train config,
FedAdam's server step after the mean). A wrapper therefore forwards every hook to the
rule and, where it needs to, runs the rule's own ``aggregate_train`` inside
``rule.combining_with(...)``. It uses only the rule's public methods.

A wrapper accepts only a ``linear`` rule: one whose aggregate is a weighted mean, which a
sum of the sites' updates (secure aggregation) or a clipped, noised mean (client-level
DP) can stand in for. Median and trimmed mean are not.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from strategies.base import GroupedStrategy
from strategies.defences import UpdatePolicy
from strategies.records import RoundRecord
from strategies.sites import SiteInfo


def require_linear(rule: GroupedStrategy, feature: str, why: str) -> None:
    """ValueError naming ``feature`` unless ``rule`` aggregates by a weighted mean."""
    if not rule.linear:
        raise ValueError(
            f"{feature} needs an aggregation rule whose aggregate is a weighted mean; "
            f"{type(rule).__name__} reduces single updates ({why})"
        )


class StrategyWrapper(Strategy):
    """Forwards every hook and the report's queries to ``rule``; subclasses override some."""

    def __init__(self, rule: GroupedStrategy | StrategyWrapper) -> None:
        self.rule = rule

    # -- what the round loop and the server read ---------------------------------------
    @property
    def sites(self) -> dict[int, SiteInfo]:
        return self.rule.sites

    @property
    def rounds(self) -> dict[int, RoundRecord]:
        return self.rule.rounds

    @property
    def min_replies(self) -> int:
        return self.rule.min_replies

    @property
    def policy(self) -> UpdatePolicy:
        return self.rule.policy

    @property
    def num_rounds(self) -> int:
        return self.rule.num_rounds

    @num_rounds.setter
    def num_rounds(self, value: int) -> None:
        self.rule.num_rounds = value

    @property
    def fraction_evaluate(self) -> float:
        """The rule's share of sites asked to evaluate (0: training rounds only)."""
        return self.rule.fraction_evaluate

    @fraction_evaluate.setter
    def fraction_evaluate(self, value: float) -> None:
        self.rule.fraction_evaluate = value

    @property
    def linear(self) -> bool:
        return self.rule.linear

    def round_record(self, server_round: int) -> RoundRecord:
        return self.rule.round_record(server_round)

    def site_name(self, node_id: int) -> str:
        return self.rule.site_name(node_id)

    def name_conflicts(self) -> list[dict[str, object]]:
        return self.rule.name_conflicts()

    def restore_history(self, rounds: list[dict[str, object]]) -> None:
        self.rule.restore_history(rounds)

    def client_dp_summary(self) -> dict[str, dict[str, float]]:
        return self.rule.client_dp_summary()

    def client_dp_site_summary(self) -> dict[str, dict[str, object]]:
        return self.rule.client_dp_site_summary()

    def state_arrays(self) -> dict[str, np.ndarray]:
        return self.rule.state_arrays()

    def load_state_arrays(self, state: dict[str, np.ndarray]) -> None:
        self.rule.load_state_arrays(state)

    # -- Flower's hooks -------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.rule.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.rule.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.rule.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.rule.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.rule.summary()

    # The rule's round loop (:mod:`strategies.round_loop`), run with this wrapper's hooks.
    start = GroupedStrategy.start
