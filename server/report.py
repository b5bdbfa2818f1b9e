"""The run's report: report.json, a metrics-over-rounds plot and per-site tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from umedpt_fl import wire


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
    """{site: {"epsilon", "delta", "round"}}: each site's latest sample-level DP spend.

    From the rounds' training metrics (``dp-epsilon``/``dp-delta`` of accepted replies);
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
    ``client_dp``: {group: {epsilon, delta, noise_multiplier, clip, rounds, sample_rate}}
    of client-level DP (empty when it is off). Spread into the report dict.
    """
    return {
        "name_conflicts": strategy.name_conflicts(),
        "client_dp": strategy.client_dp_summary(),
    }
