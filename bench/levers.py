"""The encoder levers of a pretraining run, applied to site files: augmentation, a
self-supervised task over each site's own images, and class-balanced classification losses.

Why site files: a federated arm's sites read their own TOML (as real sites do), so a lever
that every arm must see alike is written into the files every arm then reads. The derived
files live in the experiment's cache folder, with absolute data paths; the originals in
``bench/sites`` stay as they are, and cache keys name the levers beside the original files'
:func:`bench.common.sites_key`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tomli_w

from umedpt.data.augment_config import DEFAULT_AUGMENT

SELF_SUPERVISED = "self-supervised"
CLASSIFICATION = "classification"
SELF_SUPERVISED_SUFFIX = "-ssl"  # the added task's name: <labelled task><suffix>
PLACEHOLDER_BASE = Path("/site")  # where derived_tasks_key resolves a file's paths


@dataclass(frozen=True)
class Levers:
    """What a run adds to the site files as they are: ``augment`` on every labelled task
    (a policy name; the site files' default is ``DEFAULT_AUGMENT``), one
    self-supervised task per labelled task, over the same files and split, and
    ``class_weighting`` on every classification task ("balanced": docs/recipe.md)."""

    augment: str = DEFAULT_AUGMENT
    self_supervised: bool = False
    class_weighting: str = "none"

    @property
    def is_default(self) -> bool:
        return self == Levers()

    def key(self) -> dict[str, Any]:
        # Without class weighting, the key of the runs cached before it existed.
        key = asdict(self)
        if self.class_weighting == "none":
            del key["class_weighting"]
        return key

    def label(self) -> str:
        parts = [f"augment {self.augment}"]
        parts.append("self-supervised task at every site" if self.self_supervised else "no SSL")
        if self.class_weighting != "none":
            parts.append(f"{self.class_weighting} class weights")
        return ", ".join(parts)


def add_lever_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--augment",
        default=DEFAULT_AUGMENT,
        choices=("none", "default"),
        help="augmentation policy of every labelled task (docs/augmentation.md)",
    )
    parser.add_argument(
        "--self-supervised",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="add a self-supervised task over each labelled task's images "
        "(docs/self-supervised.md)",
    )
    parser.add_argument(
        "--class-weighting",
        default="none",
        choices=("none", "balanced"),
        help="class weights of every classification task's loss (site file class_weighting)",
    )


def levers_of(args: argparse.Namespace) -> Levers:
    return Levers(
        augment=args.augment,
        self_supervised=args.self_supervised,
        class_weighting=args.class_weighting,
    )


def lever_site_files(files: Sequence[Path], levers: Levers, folder: Path) -> list[Path]:
    """``files`` as they are (no lever set), or their copies with ``levers`` applied, written
    under ``folder`` (same file names; data paths and state folders made absolute)."""
    if levers.is_default:
        return [Path(f) for f in files]
    folder.mkdir(parents=True, exist_ok=True)
    derived = []
    for file in files:
        file = Path(file)
        raw = tomllib.loads(file.read_text())
        if levers.class_weighting != "none" and "privacy" in raw:
            raise ValueError(
                f"{file}: --class-weighting {levers.class_weighting} cannot apply to a site with "
                "[privacy] (its weights depend on every label; DP-SGD does not account them)"
            )
        out = folder / file.name
        text = tomli_w.dumps(apply_levers(raw, file.parent.resolve(), levers))
        # Another process's sites may be reading this file mid-federation (they reload it
        # every message): rewrite it only when it changes, whole, then renamed into place.
        if not out.is_file() or out.read_text() != text:
            tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
            tmp.write_text(text)
            tmp.replace(out)
        derived.append(out)
    return derived


def derived_tasks_key(files: Sequence[Path], levers: Levers) -> dict[str, str]:
    """Site name -> a digest of the ``[[tasks]]`` :func:`apply_levers` derives from its file,
    with paths resolved against a fixed placeholder (the same on every machine): a cache
    records it to notice when this module starts deriving other tasks from the same files."""
    key = {}
    for file in files:
        raw = tomllib.loads(Path(file).read_text())
        tasks = apply_levers(raw, PLACEHOLDER_BASE, levers)["tasks"]
        digest = hashlib.sha256(json.dumps(tasks, sort_keys=True).encode()).hexdigest()
        key[raw["name"]] = digest[:12]
    return dict(sorted(key.items()))


def apply_levers(raw: dict[str, Any], base: Path, levers: Levers) -> dict[str, Any]:
    """A site file's table with ``levers`` applied; paths resolved against ``base``."""
    site = dict(raw)
    state_dir = site.get("state_dir", f".umedpt-state/{site['name']}")
    site["state_dir"] = str((base / state_dir).resolve())
    tasks = []
    for task in raw.get("tasks", []):
        task = {**task, "path": str((base / task["path"]).resolve())}
        if task["type"] == SELF_SUPERVISED:
            tasks.append(task)
            continue
        labelled = {**task, "augment": levers.augment}
        if levers.class_weighting != "none" and task["type"] == CLASSIFICATION:
            labelled["class_weighting"] = levers.class_weighting  # else the file's own, if any
        tasks.append(labelled)
        if levers.self_supervised:
            unlabelled = {k: v for k, v in task.items() if k not in ("classes", "class_weighting")}
            unlabelled.update(
                name=task["name"] + SELF_SUPERVISED_SUFFIX,
                type=SELF_SUPERVISED,
                augment=levers.augment,
            )
            tasks.append(unlabelled)
    site["tasks"] = tasks
    return site
