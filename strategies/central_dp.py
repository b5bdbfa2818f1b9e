"""Client-level (central) differential privacy at the server, per parameter group.

When ``client-dp-noise`` (z) > 0, each group (the encoder, each shared block) is released
as in DP-FedAvg with fixed clipping (McMahan et al., 2018, "Learning differentially
private recurrent language models"; what Flower's ``DifferentialPrivacyServerSideFixed
Clipping`` does, but per group):

1. each accepted site's CHANGE of the group (its update minus the global weights) is
   clipped to L2 norm ``client-dp-clip`` (C) over the group's keys;
2. the clipped changes are SUMMED with equal weights (example counts would leak and would
   change the sensitivity);
3. Gaussian noise with std z*C is added to each coordinate of that sum;
4. the noised sum is divided by a FIXED denominator E, ``client-dp-expected-sites``, set
   before the run (never by the number of sites that replied, which depends on who took
   part); the group's new weights are the global weights plus that estimate of the mean
   (FedAdam then treats it as its pseudo-gradient's source, as it would a plain mean).

Threat model and adjacency: two federations are adjacent when one has one site more than
the other (add/remove of one whole site, all its examples: the DP-FedAvg convention).
Adding a site moves the clipped sum by at most C (L2), so the release is the Gaussian
mechanism with sensitivity C and noise multiplier z; dividing by the public constant E is
post-processing. A site that replies late or not at all only lowers the sum. The
guarantee holds against anyone who sees the global weights (other sites, whoever uses the
exported encoder); NOT against the server, which sees each site's update in the clear
(combine with nothing: secure aggregation is refused with client-level DP). The run's
``report.json`` is the coordinator's own record: it names the sites that took part, and
with client-level DP it leaves out what would release their updates unnoised (each site's
change norm, how many were clipped).

Accounting: Opacus' RDP accountant, one Gaussian-mechanism step per round in which a
group was released, noise multiplier z, at that round's sample rate: 1 when every
connected site is asked, ``sampled / available`` when the round trains a random subset
(``--sites-per-round`` / ``--fraction``, :mod:`strategies.sampling`): amplification by
subsampling, which lowers epsilon for the same noise. E is then the expected number of
sampled sites (``sites-per-round``, or ``client-dp-expected-sites``, which ``--fraction``
requires: :func:`server.rules.check_rule_settings`).
Per group, and per SITE over every group it trains: a site that trains the encoder and a
shared block is released twice per round, so its epsilon composes both (RDP composition
of the per-group histories). Under sampling, EVERY site the round was drawn from is
counted, at the sampled rate, for every group it would have carried, whether it was drawn
or not: the discount of amplification already prices in the rounds a site sits out
(counting only its drawn rounds, at the lower rate, would use that discount twice).
Epsilon is reported at ``client-dp-delta``.

Amplification holds only while nobody who sees the released weights can tell whether a
site took part. So under client-level DP the draw is seeded by a SECRET (``os.urandom``,
kept in the coordinator's server-state checkpoint so that ``--resume`` draws the same),
never by the published run seed; and the coordinator's own records (its log,
report.json, run-state.json, which name each round's training sites and their bytes) are
as private as the sites' updates themselves (docs/privacy.md).

With E larger than the number of sites that train a group (a block few sites share), the
estimate shrinks toward the global weights: keep blocks at home (the default) under
client-level DP, or expect that bias.

``ClientLevelDP`` wraps a linear rule (:mod:`strategies.wrapper`): the rule's own
``aggregate_train`` runs with this reduction in place of its weighted mean. A rule that
replaces the mean (median, trimmed mean) is refused: the clip does not bound its
sensitivity the same way.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.common.logger import log

from strategies.aggregation import Reducer
from strategies.base import GroupedStrategy
from strategies.wrapper import StrategyWrapper, require_linear
from umedpt import contract

ADJACENCY = "add/remove one site (all its examples)"
# The secret seed of the site draw under client-level DP, in the server's strategy state.
SAMPLING_SEED_KEY = "client-dp.sampling-seed"
SEED_WORDS = 4  # 128 bits, as uint32 words


@dataclass(frozen=True)
class ClientDPConfig:
    """The mechanism's parameters (run-config ``client-dp-*``)."""

    noise_multiplier: float
    clip: float
    delta: float = 1e-5
    expected_sites: int = 1  # the fixed denominator E of every group's noised sum

    def __post_init__(self) -> None:
        if self.noise_multiplier <= 0 or self.clip <= 0:
            raise ValueError(
                f"client-level DP needs client-dp-noise > 0 and client-dp-clip > 0, got "
                f"{self.noise_multiplier} and {self.clip}"
            )
        if not 0 < self.delta < 1:
            raise ValueError(f"client-dp-delta must be in (0, 1), got {self.delta}")
        if self.expected_sites < 1:
            raise ValueError(f"client-dp-expected-sites must be >= 1, got {self.expected_sites}")


def clip_change(change: dict[str, np.ndarray], clip: float) -> tuple[dict[str, np.ndarray], float]:
    """``change`` scaled to L2 norm <= ``clip`` over all its keys; also its norm before."""
    norm = math.sqrt(sum(float(np.sum(v * v)) for v in change.values()))
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    return {k: v * factor for k, v in change.items()}, norm


@dataclass
class CentralDP:
    """The per-group mechanism and its accountant for one run."""

    config: ClientDPConfig
    sample_rate: float = 1.0  # of the next release (set each round by ClientLevelDP)
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    # group -> the sample rate of each noised release so far
    releases: dict[str, list[float]] = field(default_factory=dict)
    # site -> group -> the sample rates of the releases that included the site's change
    site_releases: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @property
    def steps(self) -> dict[str, int]:
        """Group -> noised releases so far."""
        return {g: len(rates) for g, rates in self.releases.items()}

    @property
    def noise_std(self) -> float:
        """Std of the noise on each coordinate of a group's released mean: z*C/E."""
        return self.config.noise_multiplier * self.config.clip / self.config.expected_sites

    def reduce(
        self, group: str, arrays: list[dict[str, np.ndarray]], reference: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """The group's new weights: global + (sum of clipped changes + noise) / E; and facts."""
        base = {k: v.astype(np.float64) for k, v in reference.items()}
        clip = self.config.clip
        clipped = [
            clip_change({k: part[k].astype(np.float64) - base[k] for k in base}, clip)[0]
            for part in arrays
        ]
        sigma = self.config.noise_multiplier * self.config.clip  # on the sum: sensitivity C
        result = {}
        for key, start in base.items():
            total = sum(c[key] for c in clipped)
            noised = total + self.rng.normal(0.0, sigma, size=np.shape(total))
            result[key] = start + noised / self.config.expected_sites
        self.releases.setdefault(group, []).append(self.sample_rate)
        facts = {
            "noise_std": self.noise_std,
            "expected_sites": float(self.config.expected_sites),
            "sample_rate": self.sample_rate,
            "epsilon": self.epsilon(group),
        }
        return result, facts

    def reducer(self, reference: ArrayRecord, facts: dict[str, dict[str, float]]) -> Reducer:
        """A ``Reducer`` for ``reduce_by_group`` that writes each group's facts into ``facts``."""

        def reduce(
            group: str, arrays: list[dict[str, np.ndarray]], weights: list[float]
        ) -> dict[str, np.ndarray]:
            del weights  # equal weights: each site moves the sum by at most C
            ref = {k: reference[k].numpy() for k in arrays[0]}
            result, facts[group] = self.reduce(group, arrays, ref)
            log(
                INFO,
                "client-level DP: %s released, noise std %.3g, epsilon %.3g at delta %g",
                group,
                facts[group]["noise_std"],
                facts[group]["epsilon"],
                self.config.delta,
            )
            return result

        return reduce

    def count_site(self, site: str, groups: Iterable[str], rate: float | None = None) -> None:
        """``site``'s change was in this round's release of each of ``groups`` (at ``rate``,
        default: the current sample rate)."""
        mine = self.site_releases.setdefault(site, {})
        for group in groups:
            mine.setdefault(group, []).append(self.sample_rate if rate is None else rate)

    def epsilon(self, group: str) -> float:
        """Epsilon at ``delta`` of the group's releases so far (Opacus' RDP accountant)."""
        return self._epsilon({group: self.releases.get(group, [])})

    def site_epsilon(self, site: str) -> float:
        """Epsilon of every release that included ``site``, composed over its groups."""
        return self._epsilon(self.site_releases.get(site, {}))

    def _epsilon(self, rates_by_group: Mapping[str, list[float]]) -> float:
        counts: dict[float, int] = {}
        for rates in rates_by_group.values():
            for rate in rates:
                counts[rate] = counts.get(rate, 0) + 1
        z = self.config.noise_multiplier
        history = [(z, rate, n) for rate, n in sorted(counts.items())]
        return rdp_epsilon(history, self.config.delta) if history else 0.0

    def summary(self) -> dict[str, dict[str, float]]:
        """{group: {epsilon, delta, noise_multiplier, clip, rounds, ...}} for the report."""
        return {
            group: {
                "epsilon": self.epsilon(group),
                "delta": self.config.delta,
                "noise_multiplier": self.config.noise_multiplier,
                "clip": self.config.clip,
                "expected_sites": self.config.expected_sites,
                "rounds": len(rates),
                "sample_rate": sum(rates) / len(rates),  # the mean over its releases
            }
            for group, rates in sorted(self.releases.items())
        }

    def site_summary(self) -> dict[str, dict[str, object]]:
        """{site: {epsilon, delta, releases per group}}: each site's guarantee over its groups."""
        return {
            site: {
                "epsilon": self.site_epsilon(site),
                "delta": self.config.delta,
                "releases": {g: len(rates) for g, rates in sorted(groups.items())},
            }
            for site, groups in sorted(self.site_releases.items())
        }

    def replay(self, rounds: list[dict]) -> None:
        """Restore the releases of earlier rounds from their records (on resume)."""
        self.releases, self.site_releases = {}, {}
        for record in rounds:
            rates = {
                g: float(f.get("sample_rate", 1.0)) for g, f in record.get("client_dp", {}).items()
            }
            for group, rate in rates.items():
                self.releases.setdefault(group, []).append(rate)
            # a group the site would have carried but nobody drawn trained: the round's rate
            round_rate = next(iter(rates.values()), 1.0)
            for site, groups in record.get("client_dp_sites", {}).items():
                for group in groups:
                    self.count_site(site, [group], rates.get(group, round_rate))


def rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of the composed (noise multiplier, sample rate, steps) Gaussian releases,
    by Opacus' RDP accountant."""
    from opacus.accountants import RDPAccountant  # heavy import, only when DP is on

    accountant = RDPAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta))


class ClientLevelDP(StrategyWrapper):
    """A linear rule whose groups are released by the clipped, noised sum of ``CentralDP``."""

    def __init__(self, rule: GroupedStrategy, config: ClientDPConfig) -> None:
        if not isinstance(rule, GroupedStrategy):
            raise TypeError(f"client-level DP wraps a GroupedStrategy, got {type(rule)}")
        require_linear(
            rule,
            "client-level DP",
            "its clip of each site's change bounds the sensitivity of a sum only",
        )
        super().__init__(rule)
        self.mechanism = CentralDP(config)
        self._seed_words = np.frombuffer(os.urandom(4 * SEED_WORDS), np.uint32).copy()
        self._secret_draw()

    def _secret_draw(self) -> None:
        """The rule draws its sites from the secret seed, not the published run seed."""
        rule = self.rule
        assert isinstance(rule, GroupedStrategy)
        if rule.sampling is not None:
            secret = int.from_bytes(self._seed_words.tobytes(), "little")
            rule.sampling = dataclasses.replace(rule.sampling, seed=secret)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The rule's state and the secret seed (private: the server-state checkpoint)."""
        return {**self.rule.state_arrays(), SAMPLING_SEED_KEY: self._seed_words}

    def load_state_arrays(self, state: dict[str, np.ndarray]) -> None:
        """On resume: the saved secret seed, so the rounds left draw what they would have."""
        state = dict(state)
        saved = state.pop(SAMPLING_SEED_KEY, None)
        if saved is not None:
            self._seed_words = np.asarray(saved, np.uint32).copy()
            self._secret_draw()
        self.rule.load_state_arrays(state)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The rule's aggregation, each group released by the mechanism (facts in the record)."""
        rule = self.rule
        assert isinstance(rule, GroupedStrategy)
        record = rule.round_record(server_round)
        if rule.sampling is not None and record.sites_available:  # amplification by sampling
            self.mechanism.sample_rate = rule.sampling.rate(record.sites_available)
        reducer = self.mechanism.reducer(rule.global_arrays, record.client_dp)

        def combine(server_round: int, replies: list[Message]):
            return rule.combine_replies(server_round, replies, reducer)

        with rule.combining_with(combine):
            arrays, metrics = rule.aggregate_train(server_round, replies)
        # What the release included, per site (accepted replies carry a weight)...
        pool = rule.sampling_pool() if record.sites_available else {}
        if pool and record.client_dp:
            # ... under sampling: every site that could have been drawn, at the round's rate
            for site, groups in sorted(pool.items()):
                record.client_dp_sites[site] = groups
                self.mechanism.count_site(site, groups)
        for reply in [] if pool else replies:
            site = rule.site_name(rule.replying_node(reply))
            if site in record.weights and reply.content.array_records:
                carried = next(iter(reply.content.array_records.values())).keys()
                groups = sorted({contract.group_of(k) for k in carried} & set(record.client_dp))
                record.client_dp_sites[site] = groups
                self.mechanism.count_site(site, groups)
        # ... and not what would release single updates unnoised.
        record.update_norms.clear()
        return arrays, metrics

    def restore_history(self, rounds: list[dict[str, object]]) -> None:
        self.mechanism.replay(rounds)
        self.rule.restore_history(rounds)

    def client_dp_summary(self) -> dict[str, dict[str, float]]:
        return self.mechanism.summary()

    def client_dp_site_summary(self) -> dict[str, dict[str, object]]:
        return self.mechanism.site_summary()
