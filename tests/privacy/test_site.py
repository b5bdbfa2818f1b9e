"""A site under DP: the [privacy] table, the ledger, the epsilon in replies, the refusal."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import umedpt_fl.inprocess  # noqa: F401  (sets the task identity messages need outside a run)
from client.site import PrivacyBudgetSpent, SiteError, SiteRunner
from federation import wire
from federation.settings import RunSettings
from server.report import privacy_summary
from umedpt.config import load_site_config
from umedpt.data.loading import load_task_data
from umedpt.errors import ConfigError
from umedpt.privacy import LEDGER_FILE, PrivacyLedger, epsilon_of

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


def variant(dp_site: Path, name: str, *, privacy: str | None = None, tasks=None) -> Path:
    """A copy of ``dp_site`` (same data, same state folder) with another ``[privacy]`` table
    and/or its task given the names ``tasks`` (one [[tasks]] table each, all on its data)."""
    text = dp_site.read_text()
    if privacy is not None:
        text = text.replace(PRIVACY, f"\n[privacy]\n{privacy}\n")
    if tasks is not None:
        head, task = text.split("[[tasks]]")
        text = head + "".join(
            "[[tasks]]" + task.replace('name = "stripes"', f'name = "{t}"') for t in tasks
        )
    path = dp_site.with_name(f"{dp_site.stem}-{name}.toml")
    path.write_text(text)
    return path


def runner(site_file, tmp_path, **settings) -> SiteRunner:
    values = dict(local_steps=1, num_server_rounds=2, seed=1, state_root=str(tmp_path), run_key="r")
    return SiteRunner(load_site_config(site_file), RunSettings(**{**values, **settings}))


def test_a_site_reports_its_epsilon_and_refuses_once_its_budget_is_spent(dp_site, tmp_path) -> None:
    site = runner(dp_site, tmp_path)
    shared = site.shared_state()
    spent = []
    for server_round in (1, 2):
        fresh = runner(dp_site, tmp_path)  # a fresh process
        outcome = fresh.train_round(shared, server_round)
        spent.append(outcome.metrics[wire.DP_EPSILON])
        assert outcome.metrics[wire.DP_DELTA] == 1e-5
        # For the coordinator's summary: spent / budget, and the noise this round used.
        assert outcome.metrics[wire.DP_TARGET_EPSILON] == 8.0
        (sigma,) = fresh.budget.noise_multipliers.values()
        assert outcome.metrics[wire.DP_NOISE_MULTIPLIER] == pytest.approx(sigma)
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
    monkeypatch.setattr(app_module, "site_config", lambda context: load_site_config(dp_site))
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
    dp = {wire.DP_DELTA: 1e-5, wire.DP_TARGET_EPSILON: 8.0, wire.DP_NOISE_MULTIPLIER: 1.2}
    report = {
        "rounds": [
            {"round": 1, "train_metrics": {"a": {wire.DP_EPSILON: 1.0, **dp}, "b": {}}},
            {"round": 2, "train_metrics": {"a": {wire.DP_EPSILON: 1.5, **dp}}},
        ]
    }
    assert privacy_summary(report) == {
        "a": {
            "epsilon": 1.5,
            "delta": 1e-5,
            "round": 2,
            "target_epsilon": 8.0,
            "noise_multiplier": 1.2,
        }
    }


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


# -- issue 18: the ledger under concurrency, keyed by data; noise a person can see ---------

TWO_PROCESSES = r"""
import sys, time
from pathlib import Path
from client.site import SiteRunner
from federation.settings import RunSettings
from umedpt.config import load_site_config
from umedpt.training.trainer import MultiTaskTrainer, StepReport

site_file, state_root, server_round, barrier = sys.argv[1:5]


def train_steps(self, num_steps, **kwargs):  # the SGD is not what is tested: it waits
    time.sleep(1.0)
    return StepReport(num_steps, {}, {t.name: 0 for t in self.tasks})


MultiTaskTrainer.train_steps = train_steps
settings = RunSettings(
    local_steps=1, num_server_rounds=2, seed=1, state_root=state_root, run_key="r"
)
site = SiteRunner(load_site_config(site_file), settings)
shared = site.shared_state()
Path(barrier, f"ready-{server_round}").touch()
deadline = time.monotonic() + 300
while len(list(Path(barrier).glob("ready-*"))) < 2:  # both are up before either trains
    if time.monotonic() > deadline:
        sys.exit("the other process never came up")
    time.sleep(0.05)
print("epsilon", site.train_round(shared, int(server_round)).metrics["dp-epsilon"])
"""


def test_two_processes_of_one_site_record_both_spends(dp_site, tmp_path) -> None:
    # Flower's SuperExec may run two ClientApps of a site at once (a round that outlives its
    # deadline while the next starts): each must see the other's spend, none may overwrite it.
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    logs = [(tmp_path / f"out-{r}.txt", tmp_path / f"err-{r}.txt") for r in (1, 2)]
    procs = []
    for r, (out, err) in zip((1, 2), logs, strict=True):
        args = [sys.executable, "-c", TWO_PROCESSES, *map(str, (dp_site, tmp_path, r, barrier))]
        with out.open("w") as stdout, err.open("w") as stderr:  # files: a full pipe can't block
            procs.append(subprocess.Popen(args, env=env, stdout=stdout, stderr=stderr))
    try:
        for p, (_, err) in zip(procs, logs, strict=True):
            assert p.wait(timeout=600) == 0, err.read_text()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    reported = [float(out.read_text().split("epsilon")[-1]) for out, _ in logs]

    ledger = PrivacyLedger.load(load_site_config(dp_site).state_dir / LEDGER_FILE)
    assert sorted(e.round for e in ledger.entries) == [1, 2]  # both spends are on record
    (task,) = ledger.entries[0].noise_multipliers
    true_epsilon = epsilon_of(
        [(e.noise_multipliers[task], e.sample_rates[task], e.steps) for e in ledger.entries],
        delta=1e-5,
    )
    assert ledger.epsilon == pytest.approx(true_epsilon)  # what both rounds really spent
    assert max(reported) == pytest.approx(true_epsilon)  # the later reply says so too
    assert true_epsilon <= 8.0


def test_a_renamed_task_keeps_the_spend_of_its_data(dp_site, tmp_path) -> None:
    first = runner(dp_site, tmp_path / "a", num_server_rounds=1, run_key="first")
    spent = first.budget.record(1, 1).epsilon  # a first run's round, on the ledger
    renamed = variant(dp_site, "renamed", tasks=["stripes-v2"])
    second = runner(renamed, tmp_path / "b", num_server_rounds=1, run_key="second")
    assert second.budget.spent == pytest.approx(spent)  # not a fresh budget
    assert second.budget.noise_multipliers["stripes-v2"] > first.budget.noise_multipliers["stripes"]


def test_two_tasks_on_the_same_files_share_one_budget(dp_site, tmp_path) -> None:
    both = variant(dp_site, "twice", tasks=["stripes", "stripes-again"])
    site = runner(both, tmp_path, num_server_rounds=2)
    planned = 2  # rounds x local steps
    sigmas, rates = site.budget.noise_multipliers, site.budget.sample_rates
    # Every step of either task samples the same images: their spends add up.
    true_epsilon = epsilon_of([(sigmas[t], rates[t], planned) for t in sigmas], delta=1e-5)
    assert true_epsilon <= 8.0  # the plan fits both tasks' steps in one budget
    assert site.budget.epsilon_after(planned) == pytest.approx(true_epsilon)
    site.budget.check(planned)  # and what the check counts is that sum


def test_spend_recorded_by_task_name_is_kept_and_follows_the_data(dp_site, tmp_path) -> None:
    # A ledger written before data keys (format 1, by task name): its spend must survive the
    # update, and, once the site trained a round, a rename.
    state = load_site_config(dp_site).state_dir
    state.mkdir(parents=True, exist_ok=True)
    old = {"round": 1, "steps": 2, "sample_rates": {"stripes": 0.5},
           "noise_multipliers": {"stripes": 1.0}, "epsilon": 3.0, "delta": 1e-5,
           "task_epsilons": {"stripes": 3.0}, "accountant": "rdp", "run_key": "old"}  # fmt: skip
    (state / LEDGER_FILE).write_text(json.dumps({"version": 1, "entries": [old]}))
    legacy = epsilon_of([(1.0, 0.5, 2)], delta=1e-5)
    site = runner(dp_site, tmp_path, num_server_rounds=1)  # the updated site, first start
    assert site.budget.spent == pytest.approx(legacy)
    saved = json.loads((state / LEDGER_FILE).read_text())
    assert saved["version"] == 2 and "stripes" in saved["entries"][0]["data"]
    assert saved["entries"][0]["epsilon"] == 3.0  # the record itself is kept as it was
    renamed = runner(variant(dp_site, "later", tasks=["lines"]), tmp_path, run_key="next")
    assert renamed.budget.spent == pytest.approx(legacy)


def test_a_target_delta_not_below_one_over_n_is_refused(demo_sites, dp_site, tmp_path) -> None:
    task = load_site_config(demo_sites[3]).tasks[0]
    n = len(load_task_data(task).splits["train"])
    table = f"target_epsilon = 8.0\ntarget_delta = {1 / n!r}\nmax_grad_norm = 1.0"
    with pytest.raises(ConfigError) as info:
        runner(variant(dp_site, "delta", privacy=table), tmp_path)
    assert "field 'privacy.target_delta'" in str(info.value)
    assert f"n = {n} " in str(info.value) and "'stripes'" in str(info.value)


def test_a_site_that_would_send_mostly_noise_sits_the_round_out(dp_site, tmp_path) -> None:
    table = "target_epsilon = 1.0\ntarget_delta = 1e-5\nmax_grad_norm = 1.0"
    plain = variant(dp_site, "tight", privacy=table)
    first = runner(plain, tmp_path, num_server_rounds=1, run_key="first")
    first.budget.record(1, 1)  # a first run spent most of the budget
    second = runner(plain, tmp_path, num_server_rounds=1, run_key="second")
    (sigma,) = second.budget.noise_multipliers.values()
    limit = sigma / 2  # the second run would need more noise than the site accepts
    capped = variant(dp_site, "capped", privacy=f"{table}\nmax_noise_multiplier = {limit!r}")
    site = runner(capped, tmp_path, num_server_rounds=1, run_key="second")
    before = {k: v.clone() for k, v in site.model.state_dict().items()}
    with pytest.raises(PrivacyBudgetSpent, match="privacy budget exhausted") as info:
        site.train_round(site.shared_state(), 1)
    assert f"noise multiplier {sigma:.3g} > max_noise_multiplier {limit:g}" in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in site.model.state_dict().items())
    assert len(PrivacyLedger.load(site.site.state_dir / LEDGER_FILE).entries) == 1  # no spend


def test_a_very_large_noise_multiplier_is_warned_about(dp_site, tmp_path) -> None:
    table = "target_epsilon = 0.3\ntarget_delta = 1e-5\nmax_grad_norm = 1.0"
    site = runner(variant(dp_site, "small", privacy=table), tmp_path, num_server_rounds=1)
    (sigma,) = site.budget.noise_multipliers.values()
    assert sigma > 5
    lines: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("client.site")
    logger.addHandler(handler)
    try:
        site.train_round(site.shared_state(), 1)
    finally:
        logger.removeHandler(handler)
    assert any("clinic-d" in line and f"noise multiplier {sigma:.3g}" in line for line in lines)
