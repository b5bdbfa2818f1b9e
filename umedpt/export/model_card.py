"""The model card of an exported encoder: ``README.md`` for the Hugging Face hub and
``model_card.json`` with the same facts, for programs.

Every statement comes from the checkpoint, the run's report or an evaluation summary
(:mod:`umedpt.export.provenance`); what none of them records is said to be unknown.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml  # PyYAML: a dependency of timm

from umedpt.export.eval_summary import markdown_table
from umedpt.export.provenance import NOT_DISCLOSED
from umedpt.export.timm_folder import TimmExport

CARD_JSON = "model_card.json"
CARD_README = "README.md"
CARD_FORMAT = "umedpt-fl model card"
TAGS = ("timm", "image-feature-extraction", "medical-imaging", "federated-learning", "umedpt")
LICENSE_COMMENT = (
    "# set by whoever publishes: the sites' data agreements decide what the weights may be"
)
INTENDED_USE = (
    "A pretrained encoder (feature pyramid, strides 4-32) to fine-tune or probe on new "
    "medical-imaging classification, segmentation or detection tasks, for research. "
    "It is not a medical device and was not validated for clinical decisions."
)


def build_card(
    export: TimmExport, facts: dict[str, Any], evaluations: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The card's facts as one JSON-able dict (what ``model_card.json`` holds)."""
    return {
        "format": CARD_FORMAT,
        "version": 1,
        "license": "other",
        "model": {
            "library": "timm",
            "architecture": export.architecture,
            "model_args": export.model_args,
            "input_size": list(export.input_size),
            "mean": list(export.mean),
            "std": list(export.std),
            "feature_channels": export.feature_channels,
            "feature_strides": export.feature_strides,
            "feature_format": export.output_fmt,
            "parameters": export.parameters,
            "untrained_keys": export.filled_keys,
        },
        **facts,
        "evaluations": list(evaluations),
        "intended_use": INTENDED_USE,
        "limitations": limitations(export, facts, evaluations),
    }


def limitations(
    export: TimmExport, facts: dict[str, Any], evaluations: Sequence[dict[str, Any]]
) -> list[str]:
    found = []
    if export.filled_keys:
        found.append(
            f"The final norm is untrained (identity init: {', '.join(export.filled_keys)}); "
            "use features_only or forward_intermediates, not forward_features or forward_head."
        )
    if evaluations:
        targets = ", ".join(sorted({e["target"] for e in evaluations}))
        found.append(f"Transfer was measured on {targets} only.")
    else:
        found.append("The encoder's transfer to new tasks was not measured.")
    found.append(
        "Validation metrics of the pretraining tasks come from the sites' own validation "
        "splits with heads trained on the same data: they show that pretraining worked, "
        "not how well the encoder transfers."
    )
    side = export.input_size[-1]
    found.append(f"Trained on images resized to {side}x{side} px; other sizes were not checked.")
    if any(s.get("privacy") for s in facts["sites"]):
        found.append(
            "Sample-level differential privacy covers only the sites that list an epsilon; "
            "the others have no formal guarantee."
        )
    return found


def front_matter(card: dict[str, Any]) -> str:
    """YAML front matter as the Hugging Face hub reads it, plus a ``umedpt_fl`` summary."""
    training = card["training"]
    summary = {
        "architecture": card["model"]["architecture"],
        "input_size": card["model"]["input_size"],
        "training": {
            k: training[k]
            for k in ("kind", "rounds", "steps", "strategy", "init")
            if training.get(k) is not None
        },
        "sites": {
            site["name"]: {
                "tasks": [f"{t['name']}:{t['type']}" for t in site["tasks"]],
                "epsilon": (site.get("privacy") or {}).get("epsilon"),
            }
            for site in card["sites"]
        },
    }
    meta = {
        "library_name": "timm",
        "pipeline_tag": "image-feature-extraction",
        "tags": list(TAGS),
        "umedpt_fl": summary,
    }
    body = yaml.safe_dump(meta, sort_keys=False, default_flow_style=False)
    return f"---\nlicense: other  {LICENSE_COMMENT}\n{body}---\n"


def _count_text(value: Any) -> str:
    if value == NOT_DISCLOSED:
        return NOT_DISCLOSED
    return "unknown" if value is None else str(value)


def _metric_text(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def training_section(card: dict[str, Any]) -> list[str]:
    training = card["training"]
    lines = ["## Training", ""]
    if training["kind"] == "centralized":
        lines.append(
            f"Centralized UMedPT multi-task pretraining (`umedpt-fl pretrain`) of all tasks "
            f"below in one process: {training.get('steps')} steps."
        )
    else:
        done = training.get("completed_rounds")
        done_text = f" ({done} completed)" if done is not None else ""
        lines.append(
            f"Federated UMedPT pretraining (umedpt-fl, Flower): {training.get('rounds')} "
            f"rounds{done_text}, aggregation rule `{training.get('strategy') or 'unknown'}`, "
            f"weighting `{training.get('weighting') or 'unknown'}`. Images never left the "
            "sites; each site kept its task heads."
        )
    lines += [
        "",
        f"Initial weights: `{training['init']}` (`--init`)."
        if training.get("init")
        else "Initial weights: random (seeded).",
    ]
    lines += ["", "| site | task | type | training images | last validation | DP epsilon |"]
    lines.append("| --- | --- | --- | ---: | --- | ---: |")
    for site in card["sites"]:
        privacy = site.get("privacy") or {}
        epsilon = (
            f"{float(privacy['epsilon']):.2f} (delta {privacy.get('delta')})" if privacy else "-"
        )
        for task in site["tasks"]:
            lines.append(
                f"| {site['name']} | {task['name']} | {task['type']} | "
                f"{_count_text(task['train_images'])} | "
                f"{task['metric']} {_metric_text(task.get('last_validation'))} | {epsilon} |"
            )
    if not card["sites"]:
        lines.append("| unknown | | | | | |")
    if card.get("client_dp"):
        lines += ["", "Client-level differential privacy at the server, per parameter group:", ""]
        for group, spend in sorted(card["client_dp"].items()):
            lines.append(f"- `{group}`: epsilon {spend.get('epsilon')}, delta {spend.get('delta')}")
    return lines


def render_readme(card: dict[str, Any]) -> str:
    model = card["model"]
    _, height, width = model["input_size"]
    lines = [
        front_matter(card),
        f"# {model['architecture']} encoder pretrained with umedpt-fl",
        "",
        "## How to load",
        "",
        "```python",
        "import timm",
        'encoder = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True, '
        "features_only=True)",
        "```",
        "",
        "## Model",
        "",
        f"- Architecture: `{model['architecture']}` with `{json.dumps(model['model_args'])}`, "
        f"{model['parameters']:,} parameters.",
        f"- Input: 3x{height}x{width}, RGB scaled to [0, 1] and normalised with mean "
        f"{model['mean']} and std {model['std']}.",
        f"- Feature maps: channels {model['feature_channels']} at strides "
        f"{model['feature_strides']}, laid out {model['feature_format']}"
        + (" (`.permute(0, 3, 1, 2)` gives NCHW)." if model["feature_format"] == "NHWC" else "."),
        "- `umedpt-blocks/` holds the encoder under the project's names, with the shared "
        "blocks where the run shared them, for `umedpt.checkpoint.load_model`.",
        "",
        *training_section(card),
        "",
        "## Evaluation",
        "",
    ]
    if card["evaluations"]:
        for summary in card["evaluations"]:
            lines += [f"Transfer to `{summary['target']}`:", "", markdown_table(summary), ""]
    else:
        lines += ["The encoder's transfer to new tasks was not measured.", ""]
    lines += ["## Intended use", "", card["intended_use"], "", "## Limitations", ""]
    lines += [f"- {text}" for text in card["limitations"]]
    if card["unknown"]:
        lines += ["", "## Unknown", ""] + [f"- {text}" for text in card["unknown"]]
    return "\n".join(lines) + "\n"


def write_card(folder: Path, card: dict[str, Any]) -> None:
    (folder / CARD_JSON).write_text(json.dumps(card, indent=2, default=str) + "\n")
    (folder / CARD_README).write_text(render_readme(card))
