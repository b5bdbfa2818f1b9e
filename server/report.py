"""The run's report: report.json, a metrics-over-rounds plot, per-site tables, and per
round the coordinator's log lines and the tracker's scalars (both from the round's record)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from federation import wire


def primary_metrics(sites: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """{site: [(task, primary metric), ...]} from the sites' self-descriptions."""
    return {
        site: [(t.name, t.metric) for t in wire.decode_tasks(info.get(wire.TASKS, ""))]
        for site, info in sites.items()
    }


def metric_series(report: dict[str, Any], site: str, key: str) -> list[tuple[int, float]]:
    return [
        (r["round"], r["eval_metrics"][site][key])
        for r in report["rounds"]
        if key in r.get("eval_metrics", {}).get(site, {})
    ]


def privacy_summary(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{site: {"epsilon", "delta", "round", "target_epsilon", "noise_multiplier"}}: each
    site's latest sample-level DP spend, its budget and the noise multiplier it used.

    From the rounds' training metrics of accepted replies (``dp-epsilon``, ``dp-delta``,
    ``dp-target-epsilon``, ``dp-noise-multiplier``; the last two where the site sends them);
    sites without ``[privacy]`` do not appear.
    """
    latest: dict[str, dict[str, Any]] = {}
    for record in report.get("rounds", []):
        for site, metrics in record.get("train_metrics", {}).items():
            if wire.DP_EPSILON in metrics:
                latest[site] = {
                    "epsilon": float(metrics[wire.DP_EPSILON]),
                    "delta": float(metrics.get(wire.DP_DELTA, float("nan"))),
                    "round": record.get("round"),
                    "target_epsilon": float(metrics.get(wire.DP_TARGET_EPSILON, float("nan"))),
                    "noise_multiplier": float(metrics.get(wire.DP_NOISE_MULTIPLIER, float("nan"))),
                }
    return latest


def write_report(out_dir: Path, report: dict[str, Any]) -> Path:
    """Write report.json atomically, with a top-level ``privacy`` section where sites use DP."""
    if privacy := privacy_summary(report):
        report["privacy"] = privacy  # also in the report the caller returns
    path = out_dir / "report.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(path)
    return path


def write_plot(out_dir: Path, report: dict[str, Any]) -> Path | None:
    """One panel per site: each task's primary validation metric over the rounds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    primaries = primary_metrics(report.get("sites", {}))
    if not primaries or not report.get("rounds"):
        return None
    figure = Figure(figsize=(4.5 * len(primaries), 3.4))
    FigureCanvasAgg(figure)
    for i, (site, pairs) in enumerate(sorted(primaries.items()), start=1):
        axes = figure.add_subplot(1, len(primaries), i)
        for task, metric in pairs:
            series = metric_series(report, site, wire.task_metric(task, metric))
            if series:
                axes.plot(*zip(*series), marker="o", label=f"{task} ({metric})")
        axes.set_title(site)
        axes.set_xlabel("round")
        axes.set_ylim(0, 1)
        axes.grid(alpha=0.3)
        if axes.lines:  # a site that named no tasks has nothing to label
            axes.legend(fontsize=8, loc="lower right")
    figure.suptitle("validation metric per site over rounds (global encoder + local heads)")
    figure.tight_layout()
    path = out_dir / "metrics.png"
    figure.savefig(path, dpi=100)
    return path


def site_summary(report: dict[str, Any]) -> dict[str, dict[str, tuple[float | None, float | None]]]:
    """{site: {"task/metric": (first round value, last round value)}}."""
    summary: dict[str, dict[str, tuple[float | None, float | None]]] = {}
    for site, pairs in primary_metrics(report.get("sites", {})).items():
        rows = {}
        for task, metric in pairs:
            for key in (wire.task_metric(task, metric), wire.task_metric(task, wire.LOSS)):
                series = metric_series(report, site, key)
                rows[key] = (series[0][1], series[-1][1]) if series else (None, None)
        summary[site] = rows
    return summary


def strategy_sections(strategy: Any) -> dict[str, Any]:
    """Top-level report sections the strategy keeps: ``name_conflicts`` and ``client_dp``.

    ``name_conflicts``: [{name, nodes, filed_as}] for site names claimed by more than one
    node (each is filed under ``"<name> (node <id>)"``, see ``strategies.sites``);
    ``client_dp``: {group: {epsilon, delta, noise_multiplier, clip, expected_sites, rounds,
    sample_rate}} of client-level DP, and ``client_dp_sites``: {site: {epsilon, delta,
    releases}}, each site's epsilon composed over the groups it trains (both empty when it
    is off). Spread into the report dict.
    """
    return {
        "name_conflicts": strategy.name_conflicts(),
        "client_dp": strategy.client_dp_summary(),
        "client_dp_sites": strategy.client_dp_site_summary(),
    }


def traffic_summary(
    rounds: list[Mapping[str, Any]], codec: str, *, secure_aggregation: bool = False
) -> dict[str, Any]:
    """Bytes per round per direction, as they travelled under the run's codec.

    ``down``: the weights sent to sites (training and evaluation messages); ``up``: the
    sites' training replies (encoded, or masked under secure aggregation). Per round and
    their means over the rounds (``bench/compression.py`` compares codecs). Secure
    aggregation's setup traffic (stages 0-1: public keys and encrypted shares) and its
    unmasking stage are NOT counted (``not_counted`` says so in the report).
    ``uplink_codec``: how the replies travelled: the codec, or ``masked`` (32-bit masked
    vectors: secure aggregation encodes no reply with the codec).
    """
    from federation.codecs import create_codec

    per_round = [
        {
            "round": r.get("round"),
            "down": sum(r.get("bytes_sent", {}).values())
            + sum(r.get("bytes_sent_for_evaluation", {}).values()),
            "up": sum(r.get("bytes_received", {}).values()),
        }
        for r in rounds
    ]
    n = max(len(per_round), 1)
    return {
        "codec": codec,
        "downlink_codec": create_codec(codec).downlink,
        "uplink_codec": "masked" if secure_aggregation else codec,
        "mean_down_per_round": sum(r["down"] for r in per_round) / n,
        "mean_up_per_round": sum(r["up"] for r in per_round) / n,
        "not_counted": "secure aggregation's key exchange, share forwarding and unmasking",
        "rounds": per_round,
    }


# -- per round: the tracker's scalars and the coordinator's log ---------------------------
def round_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The values a tracker logs for one round (a ``RoundRecord`` as a dict).

    Tags: ``round/seconds``, ``round/sites_replied`` (accepted training replies),
    ``round/sites_rejected``, ``round/bytes_sent``/``round/bytes_received`` (totals),
    ``bytes/sent/<site>`` (training and evaluation payloads), ``bytes/received/<site>``,
    ``site/<site>/<task>/<metric>`` (validation metrics and ``train-loss``),
    ``seconds/train/<site>``, ``privacy/epsilon/<site>``, ``privacy/delta/<site>``
    (sample-level DP) and ``privacy/client-epsilon/<group>`` (client-level DP).
    """
    train = record.get("train_metrics", {})
    sent = record.get("bytes_sent", {})
    sent_eval = record.get("bytes_sent_for_evaluation", {})
    received = record.get("bytes_received", {})
    scalars: dict[str, float] = {
        "round/seconds": float(record.get("seconds", 0.0)),
        "round/sites_replied": float(len(train)),
        "round/sites_rejected": float(len({site for site, _ in record.get("rejected", [])})),
        "round/bytes_sent": float(sum(sent.values()) + sum(sent_eval.values())),
        "round/bytes_received": float(sum(received.values())),
    }
    if record.get("sites_available"):  # a seeded sample of the sites trained
        scalars["round/sites_available"] = float(record["sites_available"])
    for site in sorted(set(sent) | set(sent_eval)):
        scalars[f"bytes/sent/{site}"] = float(sent.get(site, 0) + sent_eval.get(site, 0))
    for site, size in sorted(received.items()):
        scalars[f"bytes/received/{site}"] = float(size)
    for metrics_by_site in (train, record.get("eval_metrics", {})):
        for site, metrics in sorted(metrics_by_site.items()):
            for key, value in metrics.items():
                if wire.split_task_metric(key):
                    scalars[f"site/{site}/{key}"] = float(value)
    for site, metrics in sorted(train.items()):
        if wire.TRAIN_SECONDS in metrics:
            scalars[f"seconds/train/{site}"] = float(metrics[wire.TRAIN_SECONDS])
        if wire.DP_EPSILON in metrics:
            scalars[f"privacy/epsilon/{site}"] = float(metrics[wire.DP_EPSILON])
        if wire.DP_DELTA in metrics:
            scalars[f"privacy/delta/{site}"] = float(metrics[wire.DP_DELTA])
    for group, facts in sorted(record.get("client_dp", {}).items()):
        if "epsilon" in facts:
            scalars[f"privacy/client-epsilon/{group}"] = float(facts["epsilon"])
    return scalars


def asked_sites(record: Mapping[str, Any]) -> set[str]:
    """The sites a round sent anything to (to train or to evaluate)."""
    return set(record.get("bytes_sent", {})) | set(record.get("bytes_sent_for_evaluation", {}))


def is_census(record: Mapping[str, Any]) -> bool:
    """Whether the round asked every connected known site: it trained them all (no
    sampling), or it evaluated (evaluation asks every known site still connected). A
    sampled round without evaluation says nothing about the sites it did not draw."""
    return not record.get("sites_available") or bool(record.get("bytes_sent_for_evaluation"))


def site_event_lines(
    record: Mapping[str, Any],
    *,
    joined: Mapping[str, str],
    previous: Mapping[str, Any] | None,
    connected_before: set[str] | None = None,
) -> list[str]:
    """The coordinator's plain-words lines for one round: who joined, dropped, was rejected.

    ``joined`` is {site: what it said about itself} for sites first seen in this round;
    ``previous`` the record of the round before (None for the first this process ran);
    ``connected_before`` the sites last known connected (default: those ``previous``
    asked). A site known connected but not asked in a round that asked every connected
    site (:func:`is_census`) is no longer connected (dropped); a site a sampled round did
    not draw is not (:mod:`strategies.sampling`). A site that was asked and stayed silent
    is rejected with the reason "no reply before the round timeout".
    """
    n = record["round"]
    lines = [f"round {n}: site {site} joined ({about})" for site, about in sorted(joined.items())]
    before = asked_sites(previous) if connected_before is None and previous else connected_before
    if previous is not None and before and is_census(record):
        for site in sorted(before - asked_sites(record)):
            lines.append(
                f"round {n}: site {site} dropped out: no longer connected "
                f"(it took part in round {previous['round']})"
            )
    for site, reason in record.get("rejected", []):
        lines.append(f"round {n}: site {site} rejected: {reason}")
    return lines


def describe_site(node_id: int, details: Mapping[str, str]) -> str:
    """'node 12; tasks lesions (classification), organs (segmentation)'."""
    described = wire.decode_tasks(details.get(wire.TASKS, ""))
    tasks = ", ".join(f"{t.name} ({t.type})" for t in described)
    return f"node {node_id}; tasks {tasks}" if tasks else f"node {node_id}"
