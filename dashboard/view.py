"""What the page shows, computed from a run-state (:mod:`dashboard.state`): plain data, no HTML.

One function, :func:`page_data`, turns the state into typed rows so that the page's numbers
are tested without a browser. Everything here is derived from the rounds' records, the same
records report.json, metrics.png and the coordinator's log lines come from:

- a site is *connected* while the run is running and it was last known connected: a round
  that asked every connected known site (it trained them all, or it evaluated) says who
  is; a round that trained a seeded sample of the sites (``sites_available`` in its
  record) and did not evaluate says nothing about the sites it did not draw, which stay
  as they were and show as *not sampled* (a site asked in a round that asked every
  connected site, then not in a later such round, is gone, as in the coordinator's
  "dropped out" line); *last seen* is the end of the latest round in which it replied at
  all (a refusal is a reply; a timeout is not);
- a *refused* reply is one the server rejected; its class is the site's refusal class
  (:class:`federation.reasons.Refusal`) where the reply carried one, else what the server
  found wrong with it;
- the estimated remaining time is the median of the last completed rounds' durations times
  the rounds left, less the time the running round has already taken;
- a run is *stale* when it says it is running but its round has gone on longer than the
  run's own deadlines allow (the coordinator was probably stopped without a word).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from federation import wire
from federation.reasons import Refusal

TIMEOUT_CLASS = "no reply (round timeout)"
NORM_CLASS = "update norm out of bounds"
INVALID_CLASS = "invalid reply"
ETA_ROUNDS = 5  # the last completed rounds whose durations predict the next ones
STALE_MARGIN = 60.0  # seconds past the run's deadlines before a running run counts as stale

# The recipe's rows: (label, run-config key), shown where the state's settings have the key.
RECIPE_KEYS = (
    ("rule", "strategy"),
    ("weighting", "weighting"),
    ("local steps", "local-steps"),
    ("schedule", "schedule"),
    ("learning rate", "lr"),
    ("evaluate every", "eval-every"),
    ("preset", "preset"),
    ("shared blocks", "share-blocks"),
    ("fewest sites per round", "min-sites"),
)


@dataclass(frozen=True)
class SiteRow:
    """One site's line in the table."""

    name: str
    node: str
    tasks: str  # "lesions (classification), blobs (segmentation)"
    connected: bool
    last_seen: float | None  # epoch seconds
    rounds_trained: int  # accepted training replies
    refused: int  # rejected replies (training and evaluation)
    refusal_class: str  # the latest rejected reply's class, "" if none
    epsilon: float | None  # sample-level DP spent (latest), or client-level where only that
    epsilon_target: float | None
    privacy: str  # "sample-level DP", "client-level DP", both, or ""
    bytes_to_site: int
    bytes_from_site: int
    not_sampled: bool = False  # connected, but not drawn to train in the latest round


@dataclass(frozen=True)
class Series:
    """One line of a plot: (x, y) points and its label."""

    label: str
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Event:
    """One thing that happened to the run, for the newest-first list."""

    time: float | None
    round: int
    kind: str  # joined, dropped, rejected, resumed
    site: str
    detail: str


@dataclass(frozen=True)
class RunSummary:
    status: str
    run_key: str
    completed_rounds: int
    total_rounds: int
    running_round: int | None
    elapsed: float | None  # seconds since the run first started
    remaining: float | None  # estimated seconds left, None when unknown or done
    updated: float | None  # when the state was last written
    recipe: tuple[tuple[str, str], ...]
    stale: bool = False  # "running", but past every deadline of the round


@dataclass(frozen=True)
class PageData:
    run: RunSummary
    sites: tuple[SiteRow, ...]
    metric_plots: dict[str, tuple[Series, ...]]  # {site: its tasks' primary metric}
    round_times: Series
    events: tuple[Event, ...]  # newest first
    notes: tuple[str, ...] = field(default=())  # e.g. name conflicts
    traffic: tuple[Series, ...] = field(default=())  # bytes down and up per round
    participation: tuple[Series, ...] = field(default=())  # sites trained / available


def refusal_class(reason: str) -> str:
    """The class of a rejection's reason text (see the module's docstring)."""
    for refusal in Refusal:
        if refusal.value in reason:
            return refusal.value
    if "round timeout" in reason:
        return TIMEOUT_CLASS
    if "norm" in reason:
        return NORM_CLASS
    return INVALID_CLASS


def _rejections(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(str(site), str(reason)) for site, reason in record.get("rejected", [])]


def _round_end(record: Mapping[str, Any]) -> float | None:
    started = record.get("started")
    return float(started) + float(record.get("seconds", 0.0)) if started else None


def _replied(record: Mapping[str, Any], site: str) -> bool:
    heard = set(record.get("bytes_received", {})) | set(record.get("eval_metrics", {}))
    refused = {s for s, r in _rejections(record) if refusal_class(r) != TIMEOUT_CLASS}
    return site in heard or site in refused


def _asked(record: Mapping[str, Any]) -> set[str]:
    """The sites a round sent anything to (to train or to evaluate)."""
    return set(record.get("bytes_sent", {})) | set(record.get("bytes_sent_for_evaluation", {}))


def _census(record: Mapping[str, Any]) -> bool:
    """The round asked every connected known site (no sampling, or it evaluated)."""
    return not record.get("sites_available") or bool(record.get("bytes_sent_for_evaluation"))


def _connected_after(rounds: list[Mapping[str, Any]]) -> set[str]:
    """The sites last known connected after ``rounds`` (see the module's docstring)."""
    connected: set[str] = set()
    for record in rounds:
        asked = _asked(record)
        connected = asked if _census(record) else connected | asked
    return connected


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def _describe_tasks(details: Mapping[str, Any]) -> str:
    tasks = wire.decode_tasks(str(details.get(wire.TASKS, "")))
    return ", ".join(f"{t.name} ({t.type})" for t in tasks)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def recipe(
    config: Mapping[str, Any], traffic: Mapping[str, Any] | None = None
) -> tuple[tuple[str, str], ...]:
    """The recipe's rows: the rule and its schedule, compression (both directions), the
    sites per round, the mean traffic (report.json's ``traffic``) and the privacy modes."""
    downlink = str((traffic or {}).get("downlink_codec", ""))
    rows = [(label, _fmt(config[key])) for label, key in RECIPE_KEYS if key in config]
    rows = [(k, "the preset's" if k == "learning rate" and v == "0" else v) for k, v in rows]
    compression = [f"{k}={_fmt(v)}" for k, v in sorted(config.items()) if "compress" in k]
    if config.get("secure-aggregation"):
        compression.append(
            f"secure-aggregation quantisation {config.get('secagg-quantization-range')}"
        )
    if downlink and config.get("compression", "none") != "none":
        compression.append(f"weights sent down in {downlink}")
    rows.append(("compression", ", ".join(compression) or "none"))
    if int(config.get("sites-per-round", 0) or 0):
        rows.append(("sites per round", f"{config['sites-per-round']} (a random draw)"))
    elif 0 < float(config.get("fraction", 0) or 0) < 1:
        rows.append(("sites per round", f"{_fmt(config['fraction'])} of those connected (drawn)"))
    elif "sites-per-round" in config or "fraction" in config:
        rows.append(("sites per round", "every connected site"))
    if traffic and traffic.get("rounds"):
        rows.append((
            "mean traffic per round",
            f"{_mb(float(traffic.get('mean_down_per_round', 0)))} down, "
            f"{_mb(float(traffic.get('mean_up_per_round', 0)))} up"
            + (" (key exchange not counted)" if config.get("secure-aggregation") else ""),
        ))  # fmt: skip
    privacy = []
    if config.get("secure-aggregation"):
        privacy.append("secure aggregation")
    if float(config.get("client-dp-noise", 0) or 0) > 0:
        privacy.append(
            f"client-level DP (noise {_fmt(config['client-dp-noise'])}, "
            f"clip {_fmt(config.get('client-dp-clip'))})"
        )
    if float(config.get("update-norm-bound", 0) or 0) or float(
        config.get("update-norm-ratio", 0) or 0
    ):
        privacy.append("update norm bounds")
    rows.append(("server-side privacy", ", ".join(privacy) or "none (sites may use DP-SGD)"))
    return tuple(rows)


def _site_rows(state: Mapping[str, Any], running: bool) -> tuple[SiteRow, ...]:
    rounds = state.get("rounds", [])
    sites: Mapping[str, Mapping[str, Any]] = state.get("sites", {})
    names = set(sites)
    for record in rounds:
        names |= set(record.get("bytes_sent", {})) | {s for s, _ in _rejections(record)}
    latest_asked = _asked(rounds[-1]) if rounds else set()
    connected = _connected_after(rounds)
    sample_dp: Mapping[str, Mapping[str, Any]] = state.get("privacy", {})
    client_dp: Mapping[str, Mapping[str, Any]] = state.get("client_dp_sites", {})
    rows = []
    for name in sorted(names):
        details = sites.get(name, {})
        seen = [end for r in rounds if _replied(r, name) and (end := _round_end(r)) is not None]
        refusals = [reason for r in rounds for s, reason in _rejections(r) if s == name]
        epsilon = target = None
        modes = []
        if name in sample_dp:
            modes.append("sample-level DP")
            epsilon = float(sample_dp[name].get("epsilon", float("nan")))
            target = float(sample_dp[name].get("target_epsilon", float("nan")))
        if name in client_dp:
            modes.append("client-level DP")
            if epsilon is None:
                epsilon = float(client_dp[name].get("epsilon", float("nan")))
        rows.append(
            SiteRow(
                name=name,
                node=str(details.get("node_id", "")),
                tasks=_describe_tasks(details),
                connected=running and name in connected,
                last_seen=max(seen) if seen else None,
                rounds_trained=sum(name in r.get("bytes_received", {}) for r in rounds),
                refused=len(refusals),
                refusal_class=refusal_class(refusals[-1]) if refusals else "",
                epsilon=epsilon,
                epsilon_target=target if target == target else None,  # NaN: not sent
                privacy=", ".join(modes),
                bytes_to_site=sum(
                    int(r.get(key, {}).get(name, 0))
                    for r in rounds
                    for key in ("bytes_sent", "bytes_sent_for_evaluation")
                ),
                bytes_from_site=sum(int(r.get("bytes_received", {}).get(name, 0)) for r in rounds),
                not_sampled=running and name in connected and name not in latest_asked,
            )
        )
    return tuple(rows)


def _metric_plots(state: Mapping[str, Any]) -> dict[str, tuple[Series, ...]]:
    """Each site's tasks' primary validation metric over rounds (the data of metrics.png)."""
    plots: dict[str, tuple[Series, ...]] = {}
    for site, details in sorted(state.get("sites", {}).items()):
        lines = []
        for task in wire.decode_tasks(str(details.get(wire.TASKS, ""))):
            key = wire.task_metric(task.name, task.metric)
            points = tuple(
                (float(r["round"]), float(r["eval_metrics"][site][key]))
                for r in state.get("rounds", [])
                if key in r.get("eval_metrics", {}).get(site, {})
            )
            lines.append(Series(f"{task.name} ({task.metric})", points))
        plots[site] = tuple(lines)
    return plots


def _events(state: Mapping[str, Any]) -> tuple[Event, ...]:
    """Joined (first asked), dropped (known connected, not asked by a round that asked every
    connected site: not merely left out of a sampled round), rejected, resumed; newest
    first (a resumption before the rounds it resumed into)."""
    events: list[tuple[float, int, Event]] = []
    asked_before: set[str] = set()
    connected: set[str] = set()
    for record in state.get("rounds", []):
        n = int(record["round"])
        when = record.get("started")
        asked = _asked(record)
        for site in sorted(asked - asked_before):
            events.append((n, 0, Event(when, n, "joined", site, "first asked")))
        if _census(record):
            for site in sorted(connected - asked):
                events.append(
                    (n, 1, Event(when, n, "dropped", site, f"not connected in round {n}"))
                )
            connected = asked
        else:
            connected |= asked
        end = _round_end(record)
        for site, reason in _rejections(record):
            events.append((n, 2, Event(end, n, "rejected", site, reason)))
        asked_before |= asked
    for resume in state.get("resumes", []):
        after = int(resume.get("after_round", 0))
        detail = f"resumed after round {after}"
        events.append((after + 1, -1, Event(resume.get("time"), after + 1, "resumed", "", detail)))
    events.sort(key=lambda item: (item[0], item[1]))
    return tuple(event for _, _, event in reversed(events))


def _remaining(state: Mapping[str, Any], now: float) -> float | None:
    rounds = state.get("rounds", [])
    total = int(state.get("total_rounds", 0))
    running = state.get("running_round")
    if state.get("status") != "running" or not rounds or running is None:
        return None
    typical = statistics.median(float(r.get("seconds", 0.0)) for r in rounds[-ETA_ROUNDS:])
    left = total - len(rounds)
    into = now - float(state["round_started"]) if state.get("round_started") else 0.0
    return max(0.0, typical * left - into)


def _stale(state: Mapping[str, Any], now: float) -> bool:
    """Running, yet the round has taken longer than waiting for sites plus its timeout."""
    if state.get("status") != "running" or not state.get("round_started"):
        return False
    config = state.get("config", {})
    deadline = float(config.get("round-timeout", 0) or 0) + float(
        config.get("node-wait-timeout", 0) or 0
    )
    return deadline > 0 and now - float(state["round_started"]) > deadline + STALE_MARGIN


def page_data(state: Mapping[str, Any], now: float) -> PageData:
    """Everything the page shows, from one run-state at time ``now`` (epoch seconds)."""
    status = str(state.get("status", "unknown"))
    rounds = state.get("rounds", [])
    started = state.get("started")
    updated = state.get("updated")
    end = now if status == "running" else (updated or now)
    run = RunSummary(
        status=status,
        run_key=str(state.get("config", {}).get("run-key", "")),
        completed_rounds=int(rounds[-1]["round"]) if rounds else 0,
        total_rounds=int(state.get("total_rounds", 0)),
        running_round=state.get("running_round") if status == "running" else None,
        elapsed=end - float(started) if started else None,
        remaining=_remaining(state, now),
        updated=float(updated) if updated else None,
        recipe=recipe(state.get("config", {}), state.get("traffic")),
        stale=_stale(state, now),
    )
    round_times = Series(
        "seconds", tuple((float(r["round"]), float(r.get("seconds", 0.0))) for r in rounds)
    )
    notes = tuple(
        f"site name {c.get('name')!r} is claimed by nodes "
        + ", ".join(map(str, c.get("nodes", [])))
        for c in state.get("name_conflicts", [])
        if isinstance(c, Mapping)
    )
    return PageData(
        run=run,
        sites=_site_rows(state, running=status == "running"),
        metric_plots=_metric_plots(state),
        round_times=round_times,
        events=_events(state),
        notes=notes,
        traffic=_traffic(state),
        participation=_participation(rounds),
    )


def _traffic(state: Mapping[str, Any]) -> tuple[Series, ...]:
    """Bytes sent down and up per round (report.json's ``traffic``), empty without it."""
    per_round = (state.get("traffic") or {}).get("rounds", [])
    return tuple(
        Series(label, tuple((float(r["round"]), float(r.get(key, 0))) for r in per_round))
        for label, key in (("down", "down"), ("up", "up"))
    ) if per_round else ()  # fmt: skip


def _participation(rounds: list[Mapping[str, Any]]) -> tuple[Series, ...]:
    """Sites asked to train per round and, where a sample was drawn, how many it was drawn
    from (``sites_available``); empty when no round sampled."""
    if not any(r.get("sites_available") for r in rounds):
        return ()
    trained = tuple((float(r["round"]), float(len(r.get("bytes_sent", {})))) for r in rounds)
    available = tuple(
        (float(r["round"]), float(r.get("sites_available") or len(r.get("bytes_sent", {}))))
        for r in rounds
    )
    return Series("trained", trained), Series("available", available)
