"""Client-level (central) DP per group at the server, tested as its guarantee says.

The guarantee: adjacent federations differ by one whole site (add/remove), and the
release (the new global weights) moves by at most clip / E per group, E fixed before the
run, while the noise on each coordinate has std z * clip / E. So a site moves the release
by at most 1/z noise stds, however the others reply. These tests measure that shift the
way an attacker comparing two runs would, not the formula of the code (no Ray).
"""

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
GROUPS = ("encoder", "blocks.segmentation", "blocks.detection")
DIRECTION = np.random.default_rng(7).standard_normal(SIZE)
DIRECTION /= np.linalg.norm(DIRECTION)  # a unit vector: a change of norm 1 = the clip


def big_initial() -> ArrayRecord:
    return ArrayRecord({f"{g}.w": Array(np.zeros(SIZE, np.float32)) for g in GROUPS})


def unchanged(node, key, current):
    return current  # every site sends the global weights back: the result is pure noise


def dp_round(name="fedavg", value=unchanged, sites=FOUR, rounds=1, seed=0, **settings):
    strategy = make(
        name, client_dp_noise=settings.pop("noise", 1.0), client_dp_clip=1.0, **settings
    )
    strategy.mechanism.rng = np.random.default_rng(seed)
    result = strategy.start(
        ScriptedGrid(sites, value=value), big_initial(), num_rounds=rounds, timeout=5
    )
    return strategy, {k: v.numpy().astype(np.float64) for k, v in result.arrays.items()}


def test_noise_std_is_noise_times_clip_over_the_fixed_denominator_in_every_group() -> None:
    """Whether 4, 3 or 2 sites trained a group: the denominator is E, set before the run."""
    strategy, arrays = dp_round(client_dp_expected_sites=5)
    for group in GROUPS:
        assert strategy.rounds[1].client_dp[group]["expected_sites"] == 5
        assert np.std(arrays[f"{group}.w"]) == pytest.approx(1.0 / 5, rel=0.03), group


@pytest.mark.parametrize("others_reply", [True, False])
def test_one_site_moves_the_release_by_at_most_one_over_z_noise_stds(others_reply) -> None:
    """The probe: run the same round (same noise) with and without site V, whose change is
    opposite to the others', and measure how far V moved the released encoder."""
    z = 2.0

    def change(node, key, current):  # others: +DIRECTION (at the clip); V: a huge -DIRECTION
        if not key.startswith("encoder"):
            return current
        if node == 99:
            return current - 1e6 * DIRECTION
        return current + DIRECTION if others_reply else current

    three = {n: (name, (), 10) for n, name in ((11, "a"), (22, "b"), (33, "c"))}
    with_v = {**three, 99: ("v", (), 10**9)}  # V also claims a huge example count
    released = {}
    for label, sites in (("without", three), ("with", with_v)):
        _, arrays = dp_round(value=change, sites=sites, noise=z, client_dp_expected_sites=4)
        released[label] = arrays["encoder.w"]
    noise_std = z * 1.0 / 4
    shift = np.linalg.norm(released["with"] - released["without"])
    assert shift / noise_std == pytest.approx(1 / z, rel=1e-4)  # the clip over E, no more
    # and the noise itself is what the accountant assumes
    assert np.std(released["without"] - (3 * DIRECTION / 4 if others_reply else 0)) == (
        pytest.approx(noise_std, rel=0.03)
    )


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")  # noise ~ 0: huge eps
def test_clipping_bounds_a_sites_influence_whatever_it_claims() -> None:
    def value(node, key, current):  # site d: a huge change, and a huge example count
        return current + (1e6 if node == 44 else 0.001 * node)

    _, arrays = dp_round(value=value, noise=1e-9, client_dp_expected_sites=4)
    # the encoder: each change clipped to norm 1, every site counts 1/E
    changes = [{"w": np.full(SIZE, v)} for v in (0.011, 0.022, 0.033, 1e6)]
    expected = sum(clip_change(c, 1.0)[0]["w"] for c in changes) / 4
    assert np.allclose(arrays["encoder.w"], expected, atol=1e-6)
    assert np.linalg.norm(arrays["encoder.w"]) <= 1.0 + 1e-6


def test_the_report_releases_no_single_sites_change_in_the_clear() -> None:
    def value(node, key, current):
        return current + 0.001 * node

    strategy, _ = dp_round(value=value)
    record = asdict(strategy.rounds[1])
    assert record["update_norms"] == {}
    assert all(set(facts) == {"noise_std", "expected_sites", "epsilon", "sample_rate"}
               for facts in record["client_dp"].values())  # fmt: skip
    plain = make("fedavg")
    plain.start(ScriptedGrid(FOUR, value=value), big_initial(), num_rounds=1, timeout=5)
    assert plain.rounds[1].update_norms  # without client DP the server keeps them


def test_epsilon_per_group_and_per_site_composed_over_its_groups() -> None:
    low, _ = dp_round(rounds=2, noise=1.0, sites=SITES)
    high, _ = dp_round(rounds=2, noise=2.0, sites=SITES)
    low_dp, high_dp = strategy_sections(low)["client_dp"], strategy_sections(high)["client_dp"]
    assert set(low_dp) == {"encoder", "blocks.segmentation", "blocks.detection"}
    assert low_dp["encoder"]["rounds"] == 2 and low_dp["encoder"]["delta"] == 1e-5
    one_group = rdp_epsilon([(1.0, 1.0, 2)], 1e-5)
    assert low_dp["encoder"]["epsilon"] == pytest.approx(one_group)
    assert 0 < high_dp["encoder"]["epsilon"] < low_dp["encoder"]["epsilon"]
    # site c trains the encoder and two blocks: three releases a round, composed
    sites = strategy_sections(low)["client_dp_sites"]
    assert sites["a"]["releases"] == {"blocks.segmentation": 2, "encoder": 2}
    assert sites["c"]["releases"] == {"blocks.detection": 2, "blocks.segmentation": 2, "encoder": 2}
    assert sites["c"]["epsilon"] == pytest.approx(rdp_epsilon([(1.0, 1.0, 2)] * 3, 1e-5))
    assert one_group < sites["a"]["epsilon"] < sites["c"]["epsilon"]
    # a resumed server replays the rounds' records (asdict'ed in the report) into the ledger
    resumed = make("fedavg", client_dp_noise=1.0, client_dp_clip=1.0)
    resumed.restore_history([asdict(r) for r in low.rounds.values()])
    assert resumed.client_dp_summary() == low_dp
    assert resumed.client_dp_site_summary() == sites


@pytest.mark.parametrize("name", ["fedprox", "fedadam"])
def test_composes_with_fedprox_and_fedadam(name: str) -> None:
    strategy, arrays = dp_round(name, sites=SITES)
    assert set(strategy.rounds[1].client_dp) == set(GROUPS)
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
