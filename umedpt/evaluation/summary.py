"""What an evaluation's cells say: mean ± sd per fraction, labels saved, and a plot.

"Labels saved" follows UMedPT's framing: the smallest share of the target's training
labels with which an encoder's mean reaches what the randomly initialised encoder of the
same architecture reaches with all of them (same mode). The reference is the random
baseline at 100%, or at the largest fraction evaluated when 100% is not in the grid.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
PLOT_FILE = "metric-vs-fraction.png"


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """summary.json's content: rows of mean/sd/n per (encoder, mode, fraction), labels saved."""
    metric = results["metric"]
    values: dict[tuple[str, str, float], list[float]] = defaultdict(list)
    for cell in results["cells"]:
        value = cell["metrics"].get(metric, math.nan)
        values[(cell["encoder"], cell["mode"], float(cell["fraction"]))].append(float(value))
    rows = [
        {
            "encoder": encoder,
            "mode": mode,
            "fraction": fraction,
            "mean": _mean(v),
            "sd": statistics.stdev(v) if len(v) > 1 else 0.0,
            "n": len(v),
        }
        for (encoder, mode, fraction), v in sorted(values.items(), key=_order(results))
    ]
    return {
        "target": results["target"]["task"],
        "target_file": results["target"]["file"],
        "primary_metric": metric,
        "protocol": results["protocol"],
        "rows": rows,
        "labels_saved": labels_saved(rows, results["encoders"]),
    }


def labels_saved(rows: list[dict[str, Any]], encoders: dict[str, Any]) -> list[dict[str, Any]]:
    """Per encoder and mode: the smallest fraction reaching its random baseline's full-data mean.

    ``baseline_not_monotone``: the baseline scores less with all the labels than with fewer.
    Such a target (near chance, or noisier than its budgets differ) does not resolve label
    budgets, so whatever fraction is found says little."""
    means = {(r["encoder"], r["mode"], r["fraction"]): r["mean"] for r in rows}
    out = []
    for encoder, mode in dict.fromkeys((r["encoder"], r["mode"]) for r in rows):
        baseline = _random_of(encoder, encoders)
        reference = _reference(means, baseline, mode)
        reached, not_monotone = None, False
        if reference is not None:
            fractions = sorted(f for (e, m, f) in means if e == encoder and m == mode)
            reached = next(
                (f for f in fractions if means[(encoder, mode, f)] >= reference[1]), None
            )
            not_monotone = any(
                means[(e, m, f)] > reference[1]
                for (e, m, f) in means
                if e == baseline and m == mode and f < reference[0]
            )
        out.append(
            {
                "encoder": encoder,
                "mode": mode,
                "fraction": reached,
                "baseline": baseline,
                "baseline_fraction": None if reference is None else reference[0],
                "baseline_mean": None if reference is None else reference[1],
                "baseline_not_monotone": not_monotone,
            }
        )
    return out


def _random_of(encoder: str, encoders: dict[str, Any]) -> str | None:
    model = encoders.get(encoder, {}).get("model")
    for label, described in encoders.items():
        if described.get("kind") == "random" and described.get("model") == model:
            return label
    return None


def _reference(
    means: dict[tuple[str, str, float], float], baseline: str | None, mode: str
) -> tuple[float, float] | None:
    fractions = [f for (e, m, f) in means if e == baseline and m == mode]
    if not fractions:
        return None
    top = max(fractions)
    return top, means[(baseline, mode, top)]


def render_markdown(summary: dict[str, Any]) -> str:
    """summary.md: one table per mode (mean ± sd, n seeds) and the labels saved."""
    metric = summary["primary_metric"]
    protocol = summary["protocol"]
    lines = [
        f"# Evaluation on `{summary['target']}` ({summary['target_file']})",
        "",
        f"Metric: **{metric}** on the test split, of the checkpoint chosen on the validation "
        f"split. Step budget per cell: {protocol['min_steps']}..{protocol['max_steps']} "
        f"({protocol['epochs']} passes over the subset, clamped); head lr {protocol['head_lr']}, "
        f"encoder lr (finetune) {protocol['encoder_lr']}. Mean ± sd over seeds (n).",
        "",
    ]
    modes = list(dict.fromkeys(r["mode"] for r in summary["rows"]))
    for mode in modes:
        rows = [r for r in summary["rows"] if r["mode"] == mode]
        fractions = sorted({r["fraction"] for r in rows})
        encoders = list(dict.fromkeys(r["encoder"] for r in rows))
        cell = {(r["encoder"], r["fraction"]): r for r in rows}
        lines += [
            f"## {mode}",
            "",
            "| encoder | " + " | ".join(f"{_pct(f)}" for f in fractions) + " |",
            "| --- | " + " | ".join("---:" for _ in fractions) + " |",
        ]
        for encoder in encoders:
            values = [
                f"{c['mean']:.3f} ± {c['sd']:.3f} ({c['n']})" if (c := cell.get((encoder, f)))
                else "-"
                for f in fractions
            ]  # fmt: skip
            lines.append(f"| {encoder} | " + " | ".join(values) + " |")
        lines.append("")
    lines += [
        "## Labels saved",
        "",
        "Smallest share of the training labels at which the encoder's mean reaches the random "
        "baseline's mean with all labels (same mode).",
        "",
        "| encoder | mode | reaches the baseline at | labels saved |",
        "| --- | --- | ---: | ---: |",
    ]
    for entry in summary["labels_saved"]:
        if entry["baseline_mean"] is None:
            reached, saved = "no baseline", "-"
        elif entry["fraction"] is None:
            reached, saved = "not reached", "-"
        else:
            reached = _pct(entry["fraction"])
            saved = f"{100 - entry['fraction']:g}%"
        if entry.get("baseline_not_monotone"):
            saved += " (baseline scores less with all labels than with fewer: not resolved)"
        lines.append(f"| {entry['encoder']} | {entry['mode']} | {reached} | {saved} |")
    return "\n".join(lines) + "\n"


def write_plot(path: Path, summary: dict[str, Any]) -> Path | None:
    """Metric vs fraction (log x), one line per encoder, error bars = sd over seeds."""
    if not summary["rows"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["mode"] for r in summary["rows"]))
    figure, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        rows = [r for r in summary["rows"] if r["mode"] == mode]
        for encoder in dict.fromkeys(r["encoder"] for r in rows):
            mine = sorted((r for r in rows if r["encoder"] == encoder), key=lambda r: r["fraction"])
            ax.errorbar(
                [r["fraction"] for r in mine],
                [r["mean"] for r in mine],
                yerr=[r["sd"] for r in mine],
                marker="o",
                capsize=3,
                label=encoder,
            )
        ax.set_xscale("log")
        ax.set_xlabel("share of training labels (%)")
        ax.set_ylabel(summary["primary_metric"])
        ax.set_title(f"{summary['target']}: {mode}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_summary(out: Path, results: dict[str, Any]) -> dict[str, Any]:
    summary = summarize(results)
    _atomic_write(out / SUMMARY_JSON, json.dumps(summary, indent=1))
    _atomic_write(out / SUMMARY_MD, render_markdown(summary))
    write_plot(out / PLOT_FILE, summary)
    return summary


def _order(results: dict[str, Any]):
    labels = list(results["encoders"])
    modes = list(results["protocol"]["modes"])

    def key(item: tuple[tuple[str, str, float], list[float]]) -> tuple[int, int, float]:
        (encoder, mode, fraction), _ = item
        return (
            labels.index(encoder) if encoder in labels else len(labels),
            modes.index(mode) if mode in modes else len(modes),
            fraction,
        )

    return key


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else math.nan


def _pct(fraction: float) -> str:
    return f"{fraction:g}%"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
