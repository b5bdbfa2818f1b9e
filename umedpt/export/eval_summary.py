"""The transfer evaluations (``umedpt-fl evaluate``'s ``summary.json``) a card embeds.

Read as plain JSON with only the fields the card shows checked, so a card can be written
from an evaluation folder copied from another machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from umedpt.export.provenance import ProvenanceError, read_json

SUMMARY_FILE = "summary.json"
_ROW_FIELDS = ("encoder", "mode", "fraction", "mean", "sd", "n")
# Where the evaluator's data lies on its machine: not for a published card.
_LOCAL_FIELDS = ("target_file",)


def read_summary(folder: Path) -> dict[str, Any]:
    """``folder/summary.json``, with a clear error when it is not an evaluation's summary."""
    path = folder / SUMMARY_FILE
    if not path.is_file():
        raise ProvenanceError(
            f"{folder}: no {SUMMARY_FILE}; --evaluation takes the folder `umedpt-fl evaluate "
            "--out` wrote"
        )
    summary = read_json(path, "evaluation summary")
    rows = summary.get("rows")
    if not isinstance(summary.get("target"), str) or not isinstance(rows, list):
        raise ProvenanceError(f"{path}: expected 'target' (text) and 'rows' (a list)")
    for i, row in enumerate(rows):
        missing = [f for f in _ROW_FIELDS if f not in row] if isinstance(row, dict) else _ROW_FIELDS
        if missing:
            raise ProvenanceError(f"{path}: row {i} lacks {list(missing)}")
    return {k: v for k, v in summary.items() if k not in _LOCAL_FIELDS}


def markdown_table(summary: dict[str, Any]) -> str:
    """One row per (encoder, mode, fraction): mean ± sd over n seeds."""
    metric = summary.get("primary_metric", "metric")
    lines = [
        f"| encoder | mode | labels used (%) | {metric} (mean ± sd) | n |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in summary["rows"]:
        lines.append(
            f"| {row['encoder']} | {row['mode']} | {float(row['fraction']):g} | "
            f"{float(row['mean']):.4f} ± {float(row['sd']):.4f} | {int(row['n'])} |"
        )
    return "\n".join(lines)
