"""What is known about how a checkpoint was trained, gathered for its model card.

Read from the checkpoint's ``checkpoint.json`` (kind of run, settings, rounds or steps, the
pretraining tasks) and, for a federation, from the run's ``report.json`` (the sites, their
tasks, their image counts, their privacy spend, their last validation metrics). Plain JSON
is read here: the ML core does not import the federation's code. Whatever is missing is
listed in ``unknown`` so the card can say so instead of guessing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from umedpt.errors import UmedptError
from umedpt.tasks import get_task_type

# A site's per-task training metric: the number of training images of the task. Sent by
# sites without differential privacy only (DP-SGD's guarantee does not cover it).
TRAIN_IMAGES = "train-images"
NOT_DISCLOSED = "not disclosed (DP)"
REPORT_FILE = "report.json"
# Report keys written by the federation (federation.wire, server.report), read as plain JSON.
_DP_EPSILON = "dp-epsilon"
_FEDERATED_KINDS = ("federated", "server-state")
# Settings worth publishing; paths and network addresses are not.
_PUBLIC_SETTINGS = (
    "num-server-rounds", "local-steps", "strategy", "weighting", "proximal-mu", "server-lr",
    "trim-beta", "min-sites", "preset", "encoder", "seed", "lr", "max-site-share",
    "update-norm-bound", "update-norm-ratio", "client-dp-noise", "client-dp-clip",
    "secure-aggregation", "schedule", "share-blocks", "init-source",
)  # fmt: skip


class ProvenanceError(UmedptError, ValueError):
    """A report or evaluation summary given for the card cannot be read."""


def default_report(checkpoint: Path, kind: str) -> Path | None:
    """``<run>/report.json`` beside a federation's ``global/`` (or ``server-state/``)."""
    if kind not in _FEDERATED_KINDS:
        return None
    path = checkpoint.resolve().parent / REPORT_FILE
    return path if path.is_file() else None


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ProvenanceError(f"{path}: cannot read the {what}: {exc}") from exc
    if not isinstance(data, dict):
        raise ProvenanceError(f"{path}: the {what} is not a JSON object")
    return data


def training_facts(header: Mapping[str, Any], report: Mapping[str, Any] | None) -> dict[str, Any]:
    """Kind of run, rounds or steps, aggregation rule and the public settings."""
    meta = header.get("meta", {})
    kind = str(meta.get("kind", "unknown"))
    if kind == "centralized":
        config = meta.get("config", {})
        return {
            "kind": kind,
            "steps": meta.get("step"),
            "epochs": config.get("epochs") if config.get("steps") is None else None,
            "seed": config.get("seed"),
            "schedule": config.get("schedule"),
            "init": config.get("init"),  # what --init loaded (no path), or None
        }
    settings = dict(meta.get("settings") or (report or {}).get("config") or {})
    rounds = meta.get("rounds", meta.get("round"))
    completed = len((report or {}).get("rounds", [])) if report else None
    return {
        "kind": kind,
        "rounds": rounds if rounds is not None else settings.get("num-server-rounds"),
        "completed_rounds": completed,
        "status": (report or {}).get("status"),
        "strategy": settings.get("strategy"),
        "weighting": settings.get("weighting"),
        "settings": {k: settings[k] for k in _PUBLIC_SETTINGS if k in settings},
        "init": settings.get("init-source") or None,
    }


def _latest(report: Mapping[str, Any], section: str, site: str) -> dict[str, float]:
    """A site's metrics of the last round that has them, key by key."""
    found: dict[str, float] = {}
    for record in report.get("rounds", []):
        found.update(record.get(section, {}).get(site, {}))
    return found


def federated_sites(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each site: its tasks (type, metric, training images) and its DP spend."""
    privacy = report.get("privacy", {})
    sites = []
    for name, info in sorted(report.get("sites", {}).items()):
        trained = _latest(report, "train_metrics", name)
        evaluated = _latest(report, "eval_metrics", name)
        private = name in privacy or _DP_EPSILON in trained
        tasks = []
        for entry in str(info.get("tasks", "")).split(","):
            parts = entry.split(":")
            if len(parts) != 3 or not all(parts):
                continue
            task, task_type, metric = parts
            images = trained.get(f"{task}/{TRAIN_IMAGES}")
            tasks.append(
                {
                    "name": task,
                    "type": task_type,
                    "metric": metric,
                    "train_images": NOT_DISCLOSED if private else _count(images),
                    "last_validation": evaluated.get(f"{task}/{metric}"),
                }
            )
        spend = privacy.get(name) or (
            {"epsilon": trained[_DP_EPSILON], "delta": trained.get("dp-delta")} if private else None
        )
        sites.append({"name": name, "tasks": tasks, "privacy": spend})
    return sites


def centralized_sites(header: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The site files of a ``pretrain`` run, each with its tasks and image counts."""
    meta = header.get("meta", {})
    images = meta.get("images", {})
    validation = meta.get("val", {})
    by_file: dict[str, list[dict[str, Any]]] = {}
    for task, spec in header.get("tasks", {}).items():
        source = str(meta.get("site_files", {}).get(task, "unknown"))
        metric = get_task_type(spec["type"]).primary_metric
        by_file.setdefault(source, []).append(
            {
                "name": task,
                "type": spec["type"],
                "metric": metric,
                "train_images": _count(images.get(task)),
                "last_validation": validation.get(task, {}).get(metric),
            }
        )
    return [
        {"name": Path(source).stem, "tasks": tasks, "privacy": None}
        for source, tasks in sorted(by_file.items())
    ]


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def unknown_facts(training: Mapping[str, Any], sites: list[dict[str, Any]]) -> list[str]:
    """Plain sentences for what the card cannot state."""
    unknown = []
    if not sites:
        unknown.append(
            "the sites and their tasks (no report.json of the run was found; pass --report PATH)"
            if training.get("kind") in _FEDERATED_KINDS
            else "the sites and their tasks"
        )
    missing = [
        f"{s['name']}/{t['name']}" for s in sites for t in s["tasks"] if t["train_images"] is None
    ]
    if missing:
        unknown.append(f"the training image counts of {', '.join(missing)} (not recorded)")
    if training.get("kind") in _FEDERATED_KINDS and not training.get("strategy"):
        unknown.append("the aggregation rule")
    return unknown


def gather(header: Mapping[str, Any], report: Mapping[str, Any] | None) -> dict[str, Any]:
    """``training``, ``sites``, ``client_dp`` and ``unknown`` of the card."""
    training = training_facts(header, report)
    if training["kind"] == "centralized":
        sites = centralized_sites(header)
    else:
        sites = federated_sites(report) if report else []
    return {
        "training": training,
        "sites": sites,
        "client_dp": dict((report or {}).get("client_dp") or {}),
        "unknown": unknown_facts(training, sites),
    }
