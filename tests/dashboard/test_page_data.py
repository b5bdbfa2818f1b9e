"""The dashboard's numbers, from run-states built by hand: no server, no browser."""

from __future__ import annotations

import json

import pytest

from dashboard.page import MAX_EVENTS, render_page
from dashboard.state import STATE_FILE, STATE_FORMAT, RunFolderError, read_state, write_state
from dashboard.view import TIMEOUT_CLASS, page_data, refusal_class
from federation import wire
from federation.reasons import Refusal
from server.run_state import LiveRun
from tests.dashboard.states import MB, T0, round_record, site, state


def rows(data) -> dict:
    return {row.name: row for row in data.sites}


def test_a_rejected_site_shows_its_refusals_their_class_and_an_event() -> None:
    refused = "training: the site reported an error (code 0): privacy budget exhausted"
    rounds = [
        round_record(1, asked=["clinic-a", "clinic-b"], replied=["clinic-a", "clinic-b"]),
        round_record(2, asked=["clinic-a", "clinic-b"], replied=["clinic-a"],
                     rejected=[("clinic-b", "training: no reply before the round timeout")]),
        round_record(3, asked=["clinic-a", "clinic-b"], replied=["clinic-a"],
                     rejected=[("clinic-b", refused)]),
    ]  # fmt: skip
    data = page_data(state(rounds), now=T0 + 35)
    b = rows(data)["clinic-b"]
    assert (b.rounds_trained, b.refused, b.refusal_class) == (1, 2, "privacy budget exhausted")
    # the refusal in round 3 is a reply (heard from), the timeout in round 2 is not
    assert b.last_seen == T0 + 20 + 8.0
    assert rows(data)["clinic-a"].refused == 0 and rows(data)["clinic-a"].refusal_class == ""
    assert [(e.kind, e.round, e.site) for e in data.events[:2]] == [
        ("rejected", 3, "clinic-b"),
        ("rejected", 2, "clinic-b"),
    ]
    assert data.events[0].detail == refused
    assert [e.kind for e in data.events[-2:]] == ["joined", "joined"]  # oldest last
    assert b.bytes_to_site == 3 * 2 * MB and b.bytes_from_site == 2 * MB
    html = render_page(data, now=T0 + 35, refresh=5, source="test")
    assert "privacy budget exhausted" in html and 'data-site="clinic-b"' in html


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("evaluation: the site reported an error (code 0): data error", Refusal.DATA_ERROR.value),
        ("training: no reply before the round timeout", TIMEOUT_CLASS),
        (
            "training: group 'encoder' change norm 9 > update-norm-bound 1",
            "update norm out of bounds",
        ),
        ("training: expected 1 ArrayRecord, got 0", "invalid reply"),
    ],
)
def test_refusal_classes(reason: str, expected: str) -> None:
    assert refusal_class(reason) == expected


def test_a_dp_site_shows_epsilon_spent_and_its_target_and_a_plain_site_none() -> None:
    dp = {"clinic-a": {wire.DP_EPSILON: 1.5, wire.DP_TARGET_EPSILON: 8.0}}
    rounds = [round_record(1, asked=["clinic-a", "clinic-b"], replied=["clinic-a", "clinic-b"],
                           train_extra=dp)]  # fmt: skip
    privacy = {"clinic-a": {"epsilon": 1.5, "delta": 1e-5, "round": 1, "target_epsilon": 8.0}}
    data = page_data(state(rounds, privacy=privacy), now=T0 + 12)
    a, b = rows(data)["clinic-a"], rows(data)["clinic-b"]
    assert (a.epsilon, a.epsilon_target, a.privacy) == (1.5, 8.0, "sample-level DP")
    assert (b.epsilon, b.epsilon_target, b.privacy) == (None, None, "")
    html = render_page(data, now=T0 + 12, refresh=5, source="test")
    assert "1.5 / 8" in html and "no DP" in html


def test_client_level_dp_alone_shows_the_composed_epsilon_without_a_target() -> None:
    rounds = [round_record(1, asked=["clinic-a"], replied=["clinic-a"])]
    composed = {"clinic-a": {"epsilon": 0.7, "delta": 1e-5, "releases": 1}}
    config = {"client-dp-noise": 1.1, "client-dp-clip": 0.5}
    data = page_data(state(rounds, client_dp_sites=composed), now=T0 + 12)
    a = rows(data)["clinic-a"]
    assert (a.epsilon, a.epsilon_target, a.privacy) == (0.7, None, "client-level DP")
    recipe = dict(page_data({**state(rounds), "config": config}, now=T0).run.recipe)
    assert recipe["server-side privacy"] == "client-level DP (noise 1.1, clip 0.5)"


def test_a_resumed_run_keeps_its_first_start_and_lists_the_resumption(tmp_path) -> None:
    rounds = [round_record(n, asked=["clinic-a"], replied=["clinic-a"]) for n in (1, 2)]
    first = LiveRun.begin(tmp_path, 4, run_key="abc123", resumed_after=None)
    first.write(state(rounds), running_round=3)
    resumed = LiveRun.begin(tmp_path, 4, run_key="abc123", resumed_after=2)
    assert resumed.started == first.started
    assert [r["after_round"] for r in resumed.resumes] == [2]
    third = round_record(
        3,
        asked=["clinic-a"],
        replied=[],
        rejected=[("clinic-a", "training: no reply before the round timeout")],
    )
    resumed.write(state([*rounds, third]), running_round=4)  # fmt: skip
    saved = read_state(tmp_path)
    assert saved["running_round"] == 4 and saved["total_rounds"] == 4
    assert saved["resumes"] == resumed.resumes
    data = page_data(saved, now=saved["updated"] + 1)
    kinds = [(e.kind, e.round) for e in data.events]
    # newest first: round 3's rejection, then the resumption it followed, then round 1's join
    assert kinds == [("rejected", 3), ("resumed", 3), ("joined", 1)]
    assert data.events[1].detail == "resumed after round 2"
    assert data.run.elapsed == pytest.approx(saved["updated"] + 1 - first.started)
    # another run in the same folder (another key) starts its own history
    other = LiveRun.begin(tmp_path, 4, run_key="zzz", resumed_after=2)
    assert len(other.resumes) == 1 and other.started > first.started


def test_a_run_past_its_last_round_has_none_running(tmp_path) -> None:
    live = LiveRun.begin(tmp_path, 2, run_key="k", resumed_after=None)
    live.write(state([], total=2), running_round=3)
    assert read_state(tmp_path)["running_round"] is None
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]  # no temporary file left


def test_a_dropped_site_is_not_connected_and_has_an_event() -> None:
    rounds = [
        round_record(1, asked=["clinic-a", "clinic-b"], replied=["clinic-a", "clinic-b"]),
        round_record(2, asked=["clinic-a"], replied=["clinic-a"]),
    ]
    data = page_data(state(rounds), now=T0 + 25)
    assert rows(data)["clinic-a"].connected and not rows(data)["clinic-b"].connected
    assert (data.events[0].kind, data.events[0].site) == ("dropped", "clinic-b")
    finished = page_data(state(rounds, status="completed"), now=T0 + 99)
    assert not any(row.connected for row in finished.sites)
    assert finished.run.remaining is None and finished.run.running_round is None


def test_progress_and_estimated_remaining_time() -> None:
    rounds = [round_record(n, asked=["clinic-a"], replied=["clinic-a"]) for n in (1, 2)]
    data = page_data(state(rounds, total=5), now=T0 + 20 + 3)  # round 3 running for 3 s
    assert (data.run.completed_rounds, data.run.running_round, data.run.total_rounds) == (2, 3, 5)
    assert data.run.remaining == pytest.approx(8.0 * 3 - 3)
    assert data.run.elapsed == pytest.approx(23)
    assert dict(data.run.recipe)["rule"] == "fedavg"
    assert page_data(state([], total=5), now=T0).run.remaining is None  # nothing to go by


def test_metric_plots_carry_each_sites_primary_metric_over_rounds() -> None:
    evals = {"clinic-a": {"lesions/balanced_accuracy": 0.5}, "clinic-b": {"blobs/dice": 0.25}}
    later = {"clinic-a": {"lesions/balanced_accuracy": 0.75}}
    rounds = [
        round_record(1, asked=["clinic-a", "clinic-b"], replied=["clinic-a", "clinic-b"],
                     eval_metrics=evals),
        round_record(2, asked=["clinic-a", "clinic-b"], replied=["clinic-a", "clinic-b"],
                     eval_metrics=later),
    ]  # fmt: skip
    data = page_data(state(rounds), now=T0 + 25)
    (a,) = data.metric_plots["clinic-a"]
    assert a.label == "lesions (balanced_accuracy)" and a.points == ((1.0, 0.5), (2.0, 0.75))
    assert data.metric_plots["clinic-b"][0].points == ((1.0, 0.25),)
    assert data.round_times.points == ((1.0, 8.0), (2.0, 8.0))
    html = render_page(data, now=T0 + 25, refresh=5, source="test")
    assert html.count("<polyline") == 2  # clinic-a's line and the round times


def test_what_a_site_sends_is_escaped() -> None:
    evil = "<script>alert(1)</script>"
    s = state([round_record(1, asked=[evil], replied=[], rejected=[(evil, f"training: {evil}")])])
    s["sites"][evil] = site(13, f"{evil}:classification:f1")
    html = render_page(page_data(s, now=T0), now=T0, refresh=5, source="test")
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_the_state_file_refuses_what_it_cannot_show(tmp_path) -> None:
    with pytest.raises(RunFolderError, match="no such folder"):
        read_state(tmp_path / "missing")
    with pytest.raises(RunFolderError, match="not a run folder"):
        read_state(tmp_path)
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(RunFolderError, match="older version"):
        read_state(tmp_path)
    (tmp_path / STATE_FILE).write_text(json.dumps({"format": STATE_FORMAT - 1}))
    with pytest.raises(RunFolderError, match="older version"):
        read_state(tmp_path)
    (tmp_path / STATE_FILE).write_text("{half a fi")
    with pytest.raises(RunFolderError, match="JSON"):
        read_state(tmp_path)
    write_state(tmp_path, {"status": "running"})
    assert read_state(tmp_path) == {"status": "running", "format": STATE_FORMAT}


def test_a_long_history_shows_the_newest_events_and_counts_the_rest() -> None:
    timeouts = [("clinic-b", "training: no reply before the round timeout")]
    rounds = [
        round_record(n, asked=["clinic-a", "clinic-b"], replied=["clinic-a"], rejected=timeouts)
        for n in range(1, MAX_EVENTS + 11)
    ]
    data = page_data(state(rounds, total=len(rounds) + 1), now=T0)
    html = render_page(data, now=T0, refresh=5, source="test")
    assert html.count('class="event event-') == MAX_EVENTS
    assert f"{len(data.events) - MAX_EVENTS} older events" in html
    assert f'<td class="num">{len(rounds)}</td><td>rejected' in html  # the newest is shown


def test_a_running_run_past_its_deadlines_is_called_stale() -> None:
    rounds = [round_record(1, asked=["clinic-a"], replied=["clinic-a"])]
    s = state(rounds)
    s["config"] |= {"round-timeout": 600.0, "node-wait-timeout": 300.0}
    assert not page_data(s, now=s["round_started"] + 900).run.stale
    now = s["round_started"] + 2000
    late = page_data(s, now=now)
    assert late.run.stale
    html = render_page(late, now=now, refresh=5, source="t")
    assert "no update for 33 min 20 s" in html and "is the coordinator still running" in html
    assert not page_data({**s, "status": "completed"}, now=T0 + 9999).run.stale
