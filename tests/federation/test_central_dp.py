"""Client-level (central) DP per group at the server: noise, clipping, accounting (no Ray)."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from server.report import strategy_sections
from strategies.central_dp import ClientDPConfig, ClientLevelDP, clip_change, rdp_epsilon
from tests.federation.fakes import SITES, ScriptedGrid, make
from umedpt.errors import ConfigError

SIZE = 40_000
# four sites: the encoder over 4, segmentation over 3, detection over 2
FOUR = {
    11: ("a", ("segmentation",), 10),
    22: ("b", ("segmentation",), 30),
    33: ("c", ("detection", "segmentation"), 60),
    44: ("d", ("detection",), 1000),
}
GROUPS = {"encoder": 4, "blocks.segmentation": 3, "blocks.detection": 2}


def big_initial() -> ArrayRecord:
    return ArrayRecord({f"{g}.w": Array(np.zeros(SIZE, np.float32)) for g in GROUPS})


def unchanged(node, key, current):
    return current  # every site sends the global weights back: the result is pure noise


def dp_round(name="fedavg", value=unchanged, sites=FOUR, rounds=1, **settings):
    strategy = make(
        name, client_dp_noise=settings.pop("noise", 1.0), client_dp_clip=1.0, **settings
    )
    strategy.mechanism.rng = np.random.default_rng(0)
    result = strategy.start(
        ScriptedGrid(sites, value=value), big_initial(), num_rounds=rounds, timeout=5
    )
    return strategy, {k: v.numpy().astype(np.float64) for k, v in result.arrays.items()}


def test_noise_std_per_group_is_noise_times_clip_over_the_groups_sites() -> None:
    strategy, arrays = dp_round()
    facts = strategy.rounds[1].client_dp
    for group, n in GROUPS.items():
        assert facts[group]["sites"] == n
        assert facts[group]["noise_std"] == pytest.approx(1.0 / n)
        assert np.std(arrays[f"{group}.w"]) == pytest.approx(1.0 / n, rel=0.03), group


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")  # noise ~ 0: huge eps
def test_clipping_bounds_a_sites_influence_whatever_it_claims() -> None:
    def value(node, key, current):  # site d: a huge change, and a huge example count
        return current + (1e6 if node == 44 else 0.001 * node)

    strategy, arrays = dp_round(value=value, noise=1e-9)
    # the encoder: d's change is clipped to norm 1, every site counts 1/4
    changes = [{"w": np.full(SIZE, v)} for v in (0.011, 0.022, 0.033, 1e6)]
    expected = sum(clip_change(c, 1.0)[0]["w"] for c in changes) / 4
    assert np.allclose(arrays["encoder.w"], expected, atol=1e-6)
    assert np.linalg.norm(arrays["encoder.w"]) <= 1.0 + 1e-6
    assert strategy.rounds[1].client_dp["encoder"]["clipped_sites"] == 4  # 0.011*200 > 1 too


def test_epsilon_is_reported_per_group_and_falls_with_more_noise() -> None:
    low, _ = dp_round(rounds=2, noise=1.0, sites=SITES)
    high, _ = dp_round(rounds=2, noise=2.0, sites=SITES)
    low_dp, high_dp = strategy_sections(low)["client_dp"], strategy_sections(high)["client_dp"]
    assert set(low_dp) == {"encoder", "blocks.segmentation", "blocks.detection"}
    assert low_dp["encoder"]["rounds"] == 2 and low_dp["encoder"]["delta"] == 1e-5
    assert low_dp["encoder"]["epsilon"] == pytest.approx(rdp_epsilon(1.0, 1.0, 2, 1e-5))
    assert 0 < high_dp["encoder"]["epsilon"] < low_dp["encoder"]["epsilon"]
    assert low.rounds[1].client_dp["encoder"]["epsilon"] < low_dp["encoder"]["epsilon"]
    # a resumed server replays the rounds' records (asdict'ed in the report) into the ledger
    resumed = make("fedavg", client_dp_noise=1.0, client_dp_clip=1.0)
    resumed.restore_history([asdict(r) for r in low.rounds.values()])
    assert resumed.client_dp_summary() == low_dp


@pytest.mark.parametrize("name", ["fedprox", "fedadam"])
def test_composes_with_fedprox_and_fedadam(name: str) -> None:
    strategy, arrays = dp_round(name, sites=SITES)
    assert strategy.rounds[1].client_dp["encoder"]["sites"] == 3
    assert all(np.isfinite(a).all() and a.std() > 0 for a in arrays.values())


@pytest.mark.parametrize("name", ["fedmedian", "fedtrimmedavg"])
def test_robust_rules_refuse_client_level_dp(name: str) -> None:
    with pytest.raises(ConfigError, match="client-dp-noise"):
        make(name, client_dp_noise=1.0, client_dp_clip=1.0)
    with pytest.raises(ValueError, match="weighted mean"):  # the wrapper itself refuses too
        ClientLevelDP(make(name), ClientDPConfig(1.0, 1.0))


def test_off_by_default() -> None:
    assert not isinstance(make("fedavg"), ClientLevelDP)
    assert strategy_sections(make("fedavg"))["client_dp"] == {}
