"""Sites sampled per round (strategies.sampling): seeded subsets of the requested size,
every site evaluated when due, and client-level DP amplified by the sampling rate."""

from __future__ import annotations

import numpy as np
import pytest

from federation.settings import RunSettings
from server.federation import progress_line
from server.rules import client_dp_config
from strategies.central_dp import CentralDP, ClientDPConfig
from strategies.sampling import SiteSampling
from tests.federation.fakes import FOUR, NAMES, ScriptedGrid, initial, make


def test_the_draw_is_seeded_by_names_not_node_ids_and_has_the_requested_size() -> None:
    sampling = SiteSampling(per_round=2, seed=7)
    draws = [sampling.choose(NAMES, r) for r in range(1, 9)]
    assert all(len(d) == 2 and len(set(d)) == 2 for d in draws)
    assert draws == [sampling.choose(NAMES, r) for r in range(1, 9)]  # same seed, same subsets
    assert len({tuple(d) for d in draws}) > 1  # rounds differ
    renumbered = {n + 1000: name for n, name in NAMES.items()}  # a new simulation's node ids
    assert [[n + 1000 for n in d] for d in draws] == [
        sampling.choose(renumbered, r) for r in range(1, 9)
    ]
    other = [SiteSampling(per_round=2, seed=8).choose(NAMES, r) for r in range(1, 9)]
    assert other != draws
    assert SiteSampling(fraction=0.5).size(5) == 2  # rounded down ...
    assert SiteSampling(fraction=0.1, minimum=2).size(5) == 2  # ... never below min-sites
    assert SiteSampling(per_round=9).size(4) == 4
    assert SiteSampling(per_round=2).rate(4) == 0.5


def test_each_round_trains_the_sample_and_every_site_is_evaluated_when_due() -> None:
    strategy = make("fedavg", sites_per_round=2, seed=3, eval_every=2)
    grid = ScriptedGrid(FOUR)
    strategy.start(grid, initial(), num_rounds=4, timeout=5)
    expected = SiteSampling(per_round=2, seed=3)
    for r in range(1, 5):
        record = strategy.rounds[r]
        trained = sorted(NAMES[n] for n in expected.choose(NAMES, r))
        assert sorted(record.bytes_sent) == trained
        assert sorted(record.train_metrics) == trained
        assert record.sites_available == 4
        evaluated = sorted(record.bytes_sent_for_evaluation)
        assert evaluated == (["a", "b", "c", "d"] if r % 2 == 0 else [])
        assert "2 of 4 sites trained, 2/2 sites replied" in progress_line(r, 4, record, {})


def test_without_sampling_every_site_trains() -> None:
    strategy = make("fedavg")
    strategy.start(ScriptedGrid(FOUR), initial(), num_rounds=1, timeout=5)
    assert len(strategy.rounds[1].bytes_sent) == 4
    assert strategy.rounds[1].sites_available == 0
    assert "of 4 sites trained" not in progress_line(1, 1, strategy.rounds[1], {})


def test_sampling_amplifies_client_level_dp() -> None:
    config = ClientDPConfig(noise_multiplier=1.0, clip=1.0, delta=1e-5, expected_sites=2)
    full, sampled = CentralDP(config), CentralDP(config, sample_rate=0.25)
    ref = {"w": np.zeros(3)}
    for _ in range(10):
        full.reduce("encoder", [ref], ref)
        sampled.reduce("encoder", [ref], ref)
    assert 0 < sampled.epsilon("encoder") < full.epsilon("encoder")
    replayed = CentralDP(config)  # resume: the rates come back from the round records
    replayed.replay([{"client_dp": {"encoder": {"sample_rate": 0.25}}}] * 10)
    assert replayed.epsilon("encoder") == pytest.approx(sampled.epsilon("encoder"))


def test_the_dp_wrapper_accounts_at_the_rounds_rate_and_divides_by_the_sample_size() -> None:
    settings = RunSettings.of(sites_per_round=2, client_dp_noise=1.0, client_dp_clip=1.0)
    assert client_dp_config(settings).expected_sites == 2
    assert client_dp_config(RunSettings.of(fraction=0.5, client_dp_expected_sites=2,
                                           client_dp_noise=1.0, client_dp_clip=1.0)
                            ).expected_sites == 2  # fmt: skip
    strategy = make("fedavg", sites_per_round=2, client_dp_noise=1.0, client_dp_clip=1.0)
    strategy.start(ScriptedGrid(FOUR), initial(), num_rounds=2, timeout=5)
    facts = strategy.rounds[2].client_dp["encoder"]
    assert facts["sample_rate"] == 0.5 and facts["expected_sites"] == 2
    assert strategy.client_dp_summary()["encoder"]["sample_rate"] == 0.5
