"""Poisson sampling, Opacus' accounting, the ledger and the budget check."""

from __future__ import annotations

import json

import pytest
from opacus.accountants import RDPAccountant

from umedpt.config import PrivacyConfig
from umedpt.privacy import (
    BudgetExhaustedError,
    LedgerEntry,
    PrivacyBudget,
    PrivacyLedger,
    epsilon_of,
    noise_multiplier_for,
)
from umedpt.training.streams import PoissonStream


def stream(n: int, batch_size: int, seed: int) -> PoissonStream:
    return PoissonStream(list(range(n)), batch_size, lambda samples: samples, seed=seed)


def test_poisson_batches_have_the_sample_rate_and_follow_the_seed() -> None:
    a, b = stream(1000, 50, seed=3), stream(1000, 50, seed=3)
    assert a.sample_rate == 0.05 and a.expected_batch_size == pytest.approx(50)
    sizes = [len(a.next_indices()) for _ in range(200)]
    assert abs(sum(sizes) / len(sizes) - 50) < 3  # std of the mean ~0.5
    assert len(set(sizes)) > 5  # sizes vary: not fixed-size batches
    assert [len(b.next_indices()) for _ in range(200)] == sizes  # same seed, same draws
    c, d = stream(1000, 50, seed=3), stream(1000, 50, seed=4)
    assert c.next_indices() != d.next_indices()


def test_poisson_streams_never_replay_draws_and_return_none_for_an_empty_batch() -> None:
    a = stream(100, 1, seed=0)
    batches = [a.next_batch() for _ in range(50)]
    assert any(x is None for x in batches) and any(x is not None for x in batches)
    state = a.state_dict()
    replayed = [a.next_indices() for _ in range(20)]
    # A repeated round restores the state saved before it: it must not draw the same
    # batches again (the ledger counts each round as fresh, independent draws).
    b = stream(100, 1, seed=99)
    b.load_state_dict(state)
    assert b.draws == 50
    drawn = [b.next_indices() for _ in range(20)]
    assert drawn != replayed
    fresh = stream(100, 1, seed=99)  # the stream's own (caller-chosen) seed decides
    assert drawn == [fresh.next_indices() for _ in range(20)]


def test_the_noise_multiplier_reaches_the_target_with_opacus_accountant() -> None:
    sigma = noise_multiplier_for(target_epsilon=3.0, target_delta=1e-5, sample_rate=0.05, steps=100)
    accountant = RDPAccountant()
    for _ in range(100):
        accountant.step(noise_multiplier=sigma, sample_rate=0.05)
    spent = accountant.get_epsilon(delta=1e-5)
    assert 2.9 < spent <= 3.0
    assert epsilon_of([(sigma, 0.05, 60), (sigma, 0.05, 40)], delta=1e-5) == pytest.approx(spent)


def budget(tmp_path, **config) -> PrivacyBudget:
    values = dict(target_epsilon=4.0, target_delta=1e-5, max_grad_norm=1.0)
    ledger = PrivacyLedger.load(tmp_path / "privacy-ledger.json")
    rates = {"small": 0.5, "large": 0.05}
    return PrivacyBudget(PrivacyConfig(**{**values, **config}), ledger, rates, planned_steps=20)


def test_each_task_is_accounted_on_its_own_and_the_site_reports_the_max(tmp_path) -> None:
    b = budget(tmp_path)
    assert b.noise_multipliers["small"] > b.noise_multipliers["large"]
    entry = b.record(1, 10)
    assert entry.epsilon == max(entry.task_epsilons.values())
    assert set(entry.sample_rates) == {"small", "large"}


def test_the_ledger_survives_a_reload_and_a_repeated_round_adds_its_spend(tmp_path) -> None:
    b = budget(tmp_path)
    first = b.record(1, 10)
    reloaded = budget(tmp_path)
    assert reloaded.ledger.entries == [first]
    assert reloaded.spent == pytest.approx(first.epsilon)
    again = reloaded.record(1, 10)  # round 1 repeated after a server restart
    assert again.round == 1 and again.epsilon > first.epsilon
    assert [e.round for e in PrivacyLedger.load(b.ledger.path).entries] == [1, 1]
    assert budget(tmp_path).spent == pytest.approx(again.epsilon)


def test_the_ledger_is_written_atomically(tmp_path, monkeypatch) -> None:
    b = budget(tmp_path)
    b.record(1, 5)
    before = b.ledger.path.read_text()

    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(OSError):
        b.record(2, 5)
    assert b.ledger.path.read_text() == before  # the old ledger, whole
    monkeypatch.undo()
    assert len(PrivacyLedger.load(b.ledger.path).entries) == 1


def test_a_damaged_ledger_is_not_silently_reset(tmp_path) -> None:
    (tmp_path / "privacy-ledger.json").write_text("{not json")
    with pytest.raises(ValueError, match="deleting it would forget"):
        PrivacyLedger.load(tmp_path / "privacy-ledger.json")


def test_the_budget_check_refuses_a_round_that_would_exceed_the_target(tmp_path) -> None:
    b = budget(tmp_path)
    assert b.check(20) <= 4.0  # the whole plan fits
    b.record(1, 20)
    with pytest.raises(BudgetExhaustedError, match=r"this round would spend epsilon .* > target 4"):
        b.check(1)


def test_ledger_entries_round_trip_through_json(tmp_path) -> None:
    entry = LedgerEntry(3, 7, {"a": 0.1}, {"a": 1.2}, 2.5, 1e-5, {"a": 2.5}, "prv")
    ledger = PrivacyLedger(tmp_path / "l.json")
    ledger.append(entry)
    assert PrivacyLedger.load(tmp_path / "l.json").entries == [entry]
    assert not list(tmp_path.glob(".*tmp"))
