"""Export a checkpoint folder: the encoder for timm, the shared blocks, the model card.

Layout of the output folder::

    config.json, model.safetensors   the encoder in timm's format (``local-dir:``)
    umedpt-blocks/                   encoder + shared blocks in the project's checkpoint format
    README.md, model_card.json       the model card

Written under a temporary name and renamed into place, like every checkpoint, so a failed
export (a feature-map mismatch included) never leaves a half-written folder behind.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from umedpt import contract
from umedpt.checkpoint import (
    CheckpointError,
    load_group,
    load_state,
    read_header,
    replace_folder,
    save_weights,
)
from umedpt.export.eval_summary import read_summary
from umedpt.export.model_card import CARD_JSON, build_card, write_card
from umedpt.export.provenance import default_report, gather, read_json
from umedpt.export.timm_folder import TimmExport, resolve_input_size, write_timm_folder
from umedpt.models.presets import ModelConfig

BLOCKS_DIR = "umedpt-blocks"


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    timm: TimmExport
    card: dict[str, Any]
    report: Path | None


def check_output(out: Path, checkpoint: Path) -> None:
    """Refuse to replace a folder that is not an earlier export, or the checkpoint itself."""
    target, source = out.resolve(), checkpoint.resolve()
    if target == source or source in target.parents or target in source.parents:
        raise ValueError(f"{out}: the export must go outside the checkpoint folder {checkpoint}")
    if out.exists() and (
        not out.is_dir() or (any(out.iterdir()) and not (out / CARD_JSON).is_file())
    ):
        raise ValueError(
            f"{out}: exists and is not an earlier export (no {CARD_JSON}); choose a new folder"
        )


def export_checkpoint(
    checkpoint: Path,
    out: Path,
    *,
    report: Path | None = None,
    evaluations: Sequence[Path] = (),
    image_size: int | None = None,
) -> ExportResult:
    """Write ``out`` from ``checkpoint``; bad input raises ValueError naming the file."""
    if not checkpoint.is_dir():
        raise CheckpointError(f"{checkpoint}: no such checkpoint folder")
    header = read_header(checkpoint)
    if contract.ENCODER not in header["groups"]:
        raise CheckpointError(
            f"{checkpoint}: holds no encoder (groups {header['groups']}); a site's saved "
            "rounds keep only its heads and blocks: export the federation's global/ folder"
        )
    check_output(out, checkpoint)
    config = ModelConfig.from_dict(header["model"])
    kind = str(header.get("meta", {}).get("kind", ""))
    report_path = report if report is not None else default_report(checkpoint, kind)
    report_data = read_json(report_path, "run report") if report_path is not None else None
    summaries = [read_summary(folder) for folder in evaluations]
    sizes = [int(t.get("image_size", 0)) for t in header.get("tasks", {}).values()]
    size = image_size or resolve_input_size(config, [s for s in sizes if s])

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        exported = write_timm_folder(
            tmp, config, load_group(checkpoint, contract.ENCODER), image_size=size
        )
        facts = gather(header, report_data)
        shared = [g for g in header["groups"] if not g.startswith(f"{contract.HEADS}.")]
        save_weights(  # the card's training facts, not the run's settings (local paths)
            tmp / BLOCKS_DIR,
            load_state(checkpoint, shared),
            config,
            meta={"kind": "export", "training": facts["training"]},
        )
        if size is None:
            facts["unknown"].append(
                "the image size the encoder was trained at (the card shows timm's default; "
                "pass --image-size)"
            )
        card = build_card(exported, facts, summaries)
        write_card(tmp, card)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, out)
    return ExportResult(out, exported, card, report_path)
