"""The evaluation grid: every encoder x mode x fraction x seed, resumable, one results file.

``results.json`` is rewritten (atomically) after every finished cell, so an interrupted
run loses at most the cell in progress, and a rerun with the same target and protocol
skips what is done. Encoders may be added to a finished run; changing the target, the
metric or the protocol needs a new output folder (the numbers would not be comparable).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from umedpt.config import SiteConfig, TaskConfig
from umedpt.data.loading import load_task_data
from umedpt.data.samples import Sample
from umedpt.errors import ConfigError
from umedpt.evaluation.encoders import EncoderSpec
from umedpt.evaluation.probe import (
    CellTrainer,
    FeatureBank,
    PooledPyramid,
    Probe,
    pooled_training_features,
)
from umedpt.evaluation.protocol import Cell, CellResult, EvalProtocol, summary_metric
from umedpt.evaluation.subsets import stratified_subset
from umedpt.evaluation.summary import write_summary
from umedpt.tasks import TASK_TYPES, get_task_type

log = logging.getLogger(__name__)

FORMAT = "umedpt-fl evaluation"
# 2: image-level probes standardise each pooled feature (1: a LayerNorm over the vector)
VERSION = 2
RESULTS_FILE = "results.json"
SPLITS = ("train", "val", "test")
GRID_FIELDS = frozenset({"fractions", "modes", "seeds"})


class EvaluationMismatch(ValueError):
    """``--out`` already holds results of another target, metric or protocol."""


@dataclass(frozen=True)
class Target:
    """The task an evaluation transfers to, with its loaded splits."""

    task: TaskConfig
    splits: dict[str, list[Sample]]

    def describe(self) -> dict[str, Any]:
        # How the heads weigh classes changes every cell: a resumed folder must match. Only
        # when weighted, so folders written before the setting existed still resume.
        weighting = (
            {
                "class_weighting": self.task.class_weighting,
                "class_weights": list(self.task.class_weights),
            }
            if self.task.class_weights
            else {}
        )
        return {
            **weighting,
            "file": str(self.task.source),
            "task": self.task.name,
            "type": self.task.type,
            "classes": list(self.task.classes),
            "image_size": self.task.image_size,
            "batch_size": self.task.batch_size,
            "split": asdict(self.task.split),
            "sizes": {s: len(self.splits[s]) for s in SPLITS},
        }


def choose_task(site: SiteConfig, name: str | None) -> TaskConfig:
    """The target task of a site file: the only one, or the one named ``name``."""
    names = [t.name for t in site.tasks]
    if name is None:
        if len(site.tasks) == 1:
            return site.tasks[0]
        raise ConfigError(
            site.file, "tasks", f"the file has tasks {names}: choose one with --task NAME"
        )
    for task in site.tasks:
        if task.name == name:
            return task
    raise ConfigError(site.file, "tasks", f"no task named {name!r} (tasks: {names})")


def load_target(task: TaskConfig) -> Target:
    """Read the target's data (a file the readers refuse fails here, before any training).

    A task type without labels (``target_fields`` empty: self-supervised) is refused: the
    evaluation measures labels saved, and its training batches are drawn at random (masks),
    which the probe's cached features and its targets would not share.
    """
    if not get_task_type(task.type).target_fields:
        labelled = [n for n in TASK_TYPES.names() if TASK_TYPES.get(n).target_fields]
        raise ConfigError(
            task.source,
            f"{task.field_prefix}.type",
            f"task '{task.name}' is {task.type} and has no labels: evaluate measures the "
            f"labels an encoder saves on a labelled target (types: {', '.join(labelled)})",
        )
    data = load_task_data(task)
    splits = {s: list(data.splits.get(s, [])) for s in SPLITS}
    empty = [s for s in SPLITS if not splits[s]]
    if empty:
        raise ConfigError(
            task.source,
            f"{task.field_prefix}.split",
            f"task '{task.name}' has no {' or '.join(empty)} samples; an evaluation needs "
            "train (subsets are drawn from it), val (checkpoint selection) and test (scored once)",
        )
    return Target(get_task_type(task.type).fit(task, splits["train"]), splits)


def plan_cells(encoders: Sequence[EncoderSpec], protocol: EvalProtocol) -> list[Cell]:
    """Every cell, grouped by encoder then mode, so each encoder is built once."""
    return [
        Cell(spec.label, mode, float(fraction), seed)
        for spec in encoders
        for mode in protocol.modes
        for fraction in protocol.fractions
        for seed in range(protocol.seeds)
    ]


def run_evaluation(
    target: Target,
    encoders: Sequence[EncoderSpec],
    protocol: EvalProtocol,
    out: str | Path,
    *,
    device: str = "cpu",
    on_cell: Callable[[int, int, CellResult | None], None] | None = None,
) -> dict[str, Any]:
    """Run (or finish) the grid; write results.json, summary.{json,md} and the plot."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    task_type = get_task_type(target.task.type)
    metric = summary_metric(target.task.type, task_type.primary_metric, protocol.metric)
    results = _load_or_start(out, target, metric, protocol, encoders)
    try:
        done = {CellResult(**c).key for c in results["cells"]}
    except TypeError as exc:
        raise EvaluationMismatch(
            f"{out / RESULTS_FILE}: cells of another umedpt-fl version ({exc}); use a new --out"
        ) from exc
    cells = plan_cells(encoders, protocol)
    pending = [c for c in cells if c.key not in done]
    finished = len(cells) - len(pending)  # of this grid: the folder may hold others' cells
    if on_cell:
        on_cell(finished, len(cells), None)
    torch_device = torch.device(device)
    trainer = CellTrainer(target.task, protocol, metric, torch_device)
    subsets: dict[tuple[float, int], list[int]] = {}
    for spec in encoders:
        mine = [c for c in pending if c.encoder == spec.label]
        if not mine:
            continue
        encoder = spec.build(torch_device)
        bank = None
        if any(c.mode == "frozen" for c in mine):
            bank = FeatureBank.build(encoder, target.task, target.splits, torch_device)
        pooled = None  # an image-level probe's standardisation: once per encoder, not per cell
        if task_type.image_level:
            train = target.splits["train"]
            pooled = pooled_training_features(encoder, target.task, train, torch_device, bank)
        for cell in mine:
            key = (cell.fraction, cell.seed)
            if key not in subsets:
                subsets[key] = stratified_subset(
                    target.splits["train"], cell.fraction, cell.seed, stratum=task_type.stratum
                )
            frozen = cell.mode == "frozen"
            probe = Probe(
                encoder if frozen else copy.deepcopy(encoder),
                target.task,
                spec.config,
                seed=cell.seed,
            )
            if pooled is not None and isinstance(probe.neck, PooledPyramid):
                probe.neck.fit(pooled)
            result = trainer.run(
                probe,
                cell.mode,
                target.splits,
                subsets[key],
                seed=cell.seed,
                fraction=cell.fraction,
                encoder_label=spec.label,
                bank=bank if frozen else None,
            )
            if metric not in result.metrics:
                raise ValueError(
                    f"--metric {metric!r} is not a metric of task type '{target.task.type}' "
                    f"(it has {sorted(result.metrics)})"
                )
            results["cells"].append(asdict(result))
            _write_json(out / RESULTS_FILE, results)
            done.add(result.key)
            finished += 1
            log.info(
                "%s %s %g%% seed %d: %s %.4f (%d images, %d steps, %.1f s)",
                cell.encoder, cell.mode, cell.fraction, cell.seed, metric,
                result.metrics[metric], result.subset_size, result.steps, result.seconds,
            )  # fmt: skip
            if on_cell:
                on_cell(finished, len(cells), result)
    write_summary(out, results)
    return results


def _load_or_start(
    out: Path,
    target: Target,
    metric: str,
    protocol: EvalProtocol,
    encoders: Sequence[EncoderSpec],
) -> dict[str, Any]:
    fresh = {
        "format": FORMAT,
        "version": VERSION,
        "target": target.describe(),
        "metric": metric,
        "protocol": protocol.to_dict(),
        "encoders": {s.label: s.describe() for s in encoders},
        "cells": [],
    }
    path = out / RESULTS_FILE
    if not path.is_file():
        return fresh
    try:
        existing = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EvaluationMismatch(
            f"{path}: unreadable ({exc}); move it away or use a new --out"
        ) from exc
    if existing.get("version") == 1 and not get_task_type(target.task.type).image_level:
        existing["version"] = VERSION  # version 2 changed image-level probes only
    if existing.get("version") == 1:
        raise EvaluationMismatch(
            f"{path}: written by an older umedpt-fl (results version 1: image-level probes on "
            "unstandardised features), not comparable with new cells; move it away or use a "
            "new --out"
        )
    for field in ("format", "version", "target", "metric", "protocol"):
        if _recipe(field, existing.get(field)) != _recipe(field, fresh[field]):
            raise EvaluationMismatch(
                f"{path}: holds an evaluation with another {field} "
                f"({existing.get(field)!r} vs now {fresh[field]!r}); use a new --out to compare "
                "under another target or protocol"
            )
    for label, described in fresh["encoders"].items():
        before = existing["encoders"].get(label)
        if before is not None and before != described:
            raise EvaluationMismatch(
                f"{path}: encoder label {label!r} was {before['source']} "
                f"({before['model']['encoder']}), now {described['source']} "
                f"({described['model']['encoder']}); give the new one another label (LABEL=SPEC)"
            )
        existing["encoders"][label] = described
    existing["protocol"] = _grown_grid(existing["protocol"], fresh["protocol"])
    return existing


def _grown_grid(before: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """The protocol of a folder that one run grew: the grid its cells cover, every run's
    together (a second run of one encoder at one more fraction must not make the file say
    the first run's fractions were never measured)."""
    return {
        **now,
        "fractions": sorted({*before.get("fractions", []), *now["fractions"]}),
        "modes": list(dict.fromkeys([*before.get("modes", []), *now["modes"]])),
        "seeds": max(before.get("seeds", 0), now["seeds"]),
    }


def _recipe(field: str, value: Any) -> Any:
    """What must match to resume: the protocol less the grid (fractions, modes, seeds), which
    may grow between runs without changing how any one cell is computed."""
    if field != "protocol" or not isinstance(value, dict):
        return value
    return {k: v for k, v in value.items() if k not in GRID_FIELDS}


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)
