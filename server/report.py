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


def write_report(out_dir: Path, report: dict[str, Any]) -> Path:
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
