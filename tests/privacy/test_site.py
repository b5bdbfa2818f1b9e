"""A site under DP: the [privacy] table, the ledger, the epsilon in replies, the refusal."""

from __future__ import annotations

import pytest
import torch

import umedpt_fl.inprocess  # noqa: F401  (sets the task identity messages need outside a run)
from client.site import PrivacyBudgetSpent, SiteError, SiteRunner
from federation import wire
from federation.settings import RunSettings
from server.report import privacy_summary
from umedpt.config import load_site_config
from umedpt.errors import ConfigError
from umedpt.privacy import LEDGER_FILE, PrivacyLedger

PRIVACY = "\n[privacy]\ntarget_epsilon = 8.0\ntarget_delta = 1e-5\nmax_grad_norm = 1.0\n"


@pytest.fixture
def dp_site(demo_sites, tmp_path):
    """Demo site clinic-d (one classification task) with a [privacy] table and a state
    folder (where its ledger lives) of this test's own."""
    text = demo_sites[3].read_text()
    assert 'state_dir = "state/clinic-d"' in text
    text = text.replace('state_dir = "state/clinic-d"', f'state_dir = "{tmp_path / "state"}"')
    path = demo_sites[3].parent / f"clinic-d-dp-{tmp_path.name}.toml"
    path.write_text(text.replace("[[tasks]]", PRIVACY + "\n[[tasks]]", 1))
    return path


def runner(site_file, tmp_path, **settings) -> SiteRunner:
    values = dict(local_steps=1, num_server_rounds=2, seed=1, state_root=str(tmp_path), run_key="r")
    return SiteRunner(load_site_config(site_file), RunSettings(**{**values, **settings}))


def test_a_site_reports_its_epsilon_and_refuses_once_its_budget_is_spent(dp_site, tmp_path) -> None:
    site = runner(dp_site, tmp_path)
    shared = site.shared_state()
    spent = []
    for server_round in (1, 2):
        outcome = runner(dp_site, tmp_path).train_round(shared, server_round)  # a fresh process
        spent.append(outcome.metrics[wire.DP_EPSILON])
        assert outcome.metrics[wire.DP_DELTA] == 1e-5
        assert not any(wire.TRAIN_LOSS in k for k in outcome.metrics)  # losses stay home
        assert wire.TRAIN_SECONDS not in outcome.metrics  # it follows the batch sizes
    assert spent[0] < spent[1] <= 8.0
    ledger = PrivacyLedger.load(site.site.state_dir / LEDGER_FILE)
    assert [e.round for e in ledger.entries] == [1, 2]

    third = runner(dp_site, tmp_path)
    before = {k: v.clone() for k, v in third.model.state_dict().items()}
    with pytest.raises(PrivacyBudgetSpent, match=r"clinic-d.*privacy budget exhausted.*> target 8"):
        third.train_round(shared, 3)
    after = third.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # it did not train
    assert len(PrivacyLedger.load(site.site.state_dir / LEDGER_FILE).entries) == 2
    assert not (site.state_dir / "round-00003").exists()


def test_the_ledger_spans_runs_and_no_server_can_hand_a_site_an_empty_one(
    dp_site, tmp_path
) -> None:
    first = runner(dp_site, tmp_path / "a", num_server_rounds=1, run_key="first")
    shared = first.shared_state()
    spent_first = first.train_round(shared, 1).metrics[wire.DP_EPSILON]
    # Another run (another run key, another state root): the same ledger, which already
    # holds the first run's spend, so the new run plans more noise to stay within target.
    second = runner(dp_site, tmp_path / "b", num_server_rounds=1, run_key="second")
    assert second.budget.spent == pytest.approx(spent_first)
    (task,) = second.budget.noise_multipliers
    assert second.budget.noise_multipliers[task] > first.budget.noise_multipliers[task]
    total = second.train_round(shared, 1).metrics[wire.DP_EPSILON]
    assert spent_first < total <= 8.0
    ledger = PrivacyLedger.load(first.site.state_dir / LEDGER_FILE)
    assert [e.run_key for e in ledger.entries] == ["first", "second"]


@pytest.mark.parametrize("run_key", ["../../elsewhere", "/tmp/x", "a/b", "x" * 65])
def test_a_run_key_that_is_not_a_plain_name_is_refused(dp_site, tmp_path, run_key) -> None:
    with pytest.raises(SiteError, match="run key"):
        runner(dp_site, tmp_path, run_key=run_key)


def test_the_refusal_is_an_error_reply_the_server_rejects_with_the_reason(
    dp_site, tmp_path, monkeypatch
) -> None:
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

    import client.app as app_module
    from strategies.validation import reply_problem

    site = runner(dp_site, tmp_path, num_server_rounds=1)
    site.budget.record(1, 1)  # the whole budget is spent
    monkeypatch.setattr(app_module, "site_runner", lambda context, message: site)
    shared = site.shared_state()
    content = RecordDict(
        {
            wire.CONFIG: ConfigRecord({wire.SERVER_ROUND: 2}),
            wire.SHARED_ARRAYS: ArrayRecord(shared),
        }
    )
    asked = Message(content, dst_node_id=5, message_type="train")
    reply = app_module.train(asked, None)
    assert reply.has_error()
    problem = reply_problem(
        reply,
        expected_keys=list(shared),
        reference={},
        weight_key=wire.NUM_EXAMPLES,
        needs_arrays=True,
    )
    assert "privacy budget exhausted" in problem


def test_the_report_lists_each_sites_latest_epsilon() -> None:
    report = {
        "rounds": [
            {
                "round": 1,
                "train_metrics": {"a": {wire.DP_EPSILON: 1.0, wire.DP_DELTA: 1e-5}, "b": {}},
            },
            {"round": 2, "train_metrics": {"a": {wire.DP_EPSILON: 1.5, wire.DP_DELTA: 1e-5}}},
        ]
    }
    assert privacy_summary(report) == {"a": {"epsilon": 1.5, "delta": 1e-5, "round": 2}}


@pytest.mark.parametrize(
    ("table", "field", "problem"),
    [
        (
            "target_epsilon = -1.0\ntarget_delta = 1e-5\nmax_grad_norm = 1.0",
            "privacy.target_epsilon",
            "positive",
        ),
        (
            "target_epsilon = 8.0\ntarget_delta = 1.5\nmax_grad_norm = 1.0",
            "privacy.target_delta",
            "(0, 1)",
        ),
        (
            "target_epsilon = 8.0\ntarget_delta = 1e-5\nmax_grad_norm = 'big'",
            "privacy.max_grad_norm",
            "positive",
        ),
        ("target_epsilon = 8.0\ntarget_delta = 1e-5", "privacy.max_grad_norm", "required"),
        (
            "target_epsilon = 8.0\ntarget_delta = 1e-5\nmax_grad_norm = 1.0\naccountant = 'gdp'",
            "privacy.accountant",
            "rdp, prv",
        ),
        (
            "target_epsilon = 8.0\ntarget_delta = 1e-5\nmax_grad_norm = 1.0\nnoise = 1.0",
            "privacy.noise",
            "unknown field",
        ),
        (
            "target_epsilon = inf\ntarget_delta = 1e-5\nmax_grad_norm = 1.0",
            "privacy.target_epsilon",
            "positive",
        ),
    ],
)
def test_bad_privacy_values_name_the_file_and_field(
    demo_sites, tmp_path, table, field, problem
) -> None:
    path = tmp_path / "site.toml"
    text = demo_sites[3].read_text().replace("[[tasks]]", f"[privacy]\n{table}\n\n[[tasks]]", 1)
    path.write_text(text.replace('path = "', f'path = "{demo_sites[3].parent}/'))
    with pytest.raises(ConfigError) as info:
        load_site_config(path)
    assert f"site.toml: field '{field}'" in str(info.value)
    assert problem in str(info.value)


def test_a_site_without_a_privacy_table_has_no_privacy(demo_sites) -> None:
    assert load_site_config(demo_sites[3]).privacy is None
    assert load_site_config(demo_sites[3]).tasks
