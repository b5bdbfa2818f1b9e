"""Client-level (central) differential privacy at the server, per parameter group.

When ``client-dp-noise`` > 0, each group (the encoder, each block) is reduced as in
DP-FedAvg with fixed clipping (McMahan et al., 2018; what Flower's
``DifferentialPrivacyServerSideFixedClipping`` does, but per group):

1. each accepted site's CHANGE of the group (its update minus the global weights) is
   clipped to L2 norm ``client-dp-clip`` over the group's keys;
2. the clipped changes are averaged with EQUAL weights (example counts would leak and
   would change the sensitivity);
3. Gaussian noise with std ``client-dp-noise * client-dp-clip / n_group`` is added to
   each coordinate of that mean, where ``n_group`` is the number of sites that trained
   the group in the round (Flower's wrappers divide by the number of sampled clients for
   every key, which is too little noise for a block that fewer sites trained);
4. the group's new weights are the global weights plus that noised mean (FedAdam then
   treats it as its pseudo-gradient's source, as it would a plain mean).

Accounting: Opacus' RDP accountant per group, one Gaussian-mechanism step per round in
which the group was updated, noise multiplier ``client-dp-noise``, sample rate = the
fraction of the sites that were asked to train (1.0 here: every connected site is).
Epsilon is reported at ``client-dp-delta``; it protects a whole site's participation
(all its examples), against anyone who sees the global weights, but NOT against the
server itself, which sees each site's update in the clear.

``ClientLevelDP`` wraps a linear rule (:mod:`strategies.wrapper`): the rule's own
``aggregate_train`` runs with this reduction in place of its weighted mean, so FedAdam's
server step treats the noised mean as it would a plain one. A rule that replaces the mean
(median, trimmed mean) is refused: the clip does not bound its sensitivity the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.common.logger import log

from strategies.aggregation import Reducer
from strategies.base import GroupedStrategy
from strategies.wrapper import StrategyWrapper, require_linear


@dataclass(frozen=True)
class ClientDPConfig:
    """The mechanism's parameters (run-config ``client-dp-*``)."""

    noise_multiplier: float
    clip: float
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.noise_multiplier <= 0 or self.clip <= 0:
            raise ValueError(
                f"client-level DP needs client-dp-noise > 0 and client-dp-clip > 0, got "
                f"{self.noise_multiplier} and {self.clip}"
            )
        if not 0 < self.delta < 1:
            raise ValueError(f"client-dp-delta must be in (0, 1), got {self.delta}")


def clip_change(change: dict[str, np.ndarray], clip: float) -> tuple[dict[str, np.ndarray], float]:
    """``change`` scaled to L2 norm <= ``clip`` over all its keys; also its norm before."""
    norm = math.sqrt(sum(float(np.sum(v * v)) for v in change.values()))
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    return {k: v * factor for k, v in change.items()}, norm


@dataclass
class CentralDP:
    """The per-group mechanism and its accountant for one run."""

    config: ClientDPConfig
    sample_rate: float = 1.0
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    steps: dict[str, int] = field(default_factory=dict)  # group -> noised releases so far

    def noise_std(self, n_group: int) -> float:
        """Std of the noise added to each coordinate of a group's mean over ``n_group``."""
        return self.config.noise_multiplier * self.config.clip / n_group

    def reduce(
        self, group: str, arrays: list[dict[str, np.ndarray]], reference: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """The group's new weights: global + noised mean of the clipped changes; and facts."""
        n = len(arrays)
        clipped, norms = [], []
        for part in arrays:
            change = {
                k: part[k].astype(np.float64) - reference[k].astype(np.float64) for k in reference
            }
            scaled, norm = clip_change(change, self.config.clip)
            clipped.append(scaled)
            norms.append(norm)
        std = self.noise_std(n)
        result = {}
        for key, base in reference.items():
            mean = sum(c[key] for c in clipped) / n
            noise = self.rng.normal(0.0, std, size=mean.shape)
            result[key] = base.astype(np.float64) + mean + noise
        self.steps[group] = self.steps.get(group, 0) + 1
        facts = {
            "sites": float(n),
            "noise_std": std,
            "clipped_sites": float(sum(1 for x in norms if x > self.config.clip)),
            "epsilon": self.epsilon(group),
        }
        return result, facts

    def reducer(self, reference: ArrayRecord, facts: dict[str, dict[str, float]]) -> Reducer:
        """A ``Reducer`` for ``reduce_by_group`` that writes each group's facts into ``facts``."""

        def reduce(
            group: str, arrays: list[dict[str, np.ndarray]], weights: list[float]
        ) -> dict[str, np.ndarray]:
            del weights  # equal weights: the sensitivity of the mean is clip / n_group
            ref = {k: reference[k].numpy() for k in arrays[0]}
            result, facts[group] = self.reduce(group, arrays, ref)
            log(
                INFO,
                "client-level DP: %s over %d sites, noise std %.3g, epsilon %.3g at delta %g",
                group,
                len(arrays),
                facts[group]["noise_std"],
                facts[group]["epsilon"],
                self.config.delta,
            )
            return result

        return reduce

    def epsilon(self, group: str) -> float:
        """Epsilon at ``delta`` of the group's releases so far (Opacus' RDP accountant)."""
        steps = self.steps.get(group, 0)
        if steps == 0:
            return 0.0
        return rdp_epsilon(self.config.noise_multiplier, self.sample_rate, steps, self.config.delta)

    def summary(self) -> dict[str, dict[str, float]]:
        """{group: {epsilon, delta, noise_multiplier, clip, rounds, sample_rate}} for the report."""
        return {
            group: {
                "epsilon": self.epsilon(group),
                "delta": self.config.delta,
                "noise_multiplier": self.config.noise_multiplier,
                "clip": self.config.clip,
                "rounds": steps,
                "sample_rate": self.sample_rate,
            }
            for group, steps in sorted(self.steps.items())
        }

    def replay(self, rounds: list[dict]) -> None:
        """Restore the releases of earlier rounds from their records (on resume)."""
        self.steps = {}
        for record in rounds:
            for group in record.get("client_dp", {}):
                self.steps[group] = self.steps.get(group, 0) + 1


def rdp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` subsampled Gaussian releases, by Opacus' RDP accountant."""
    from opacus.accountants import RDPAccountant  # heavy import, only when DP is on

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta))


class ClientLevelDP(StrategyWrapper):
    """A linear rule whose groups are reduced by the clipped, noised mean of ``CentralDP``."""

    def __init__(self, rule: GroupedStrategy, config: ClientDPConfig) -> None:
        if not isinstance(rule, GroupedStrategy):
            raise TypeError(f"client-level DP wraps a GroupedStrategy, got {type(rule)}")
        require_linear(
            rule,
            "client-level DP",
            "its clip of each site's change bounds the sensitivity of a mean only",
        )
        super().__init__(rule)
        self.mechanism = CentralDP(config, sample_rate=rule.fraction_train)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The rule's aggregation, each group reduced by the mechanism (facts in the record)."""
        rule = self.rule
        assert isinstance(rule, GroupedStrategy)
        facts = rule.round_record(server_round).client_dp
        reducer = self.mechanism.reducer(rule.global_arrays, facts)

        def combine(server_round: int, replies: list[Message]):
            return rule.combine_replies(server_round, replies, reducer)

        with rule.combining_with(combine):
            return rule.aggregate_train(server_round, replies)

    def restore_history(self, rounds: list[dict[str, object]]) -> None:
        self.mechanism.replay(rounds)
        self.rule.restore_history(rounds)

    def client_dp_summary(self) -> dict[str, dict[str, float]]:
        return self.mechanism.summary()
