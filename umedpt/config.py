"""Site configuration: one TOML file per site, parsed once into frozen dataclasses.

A site file lists the site's tasks. Every error names the file and the field, e.g.
``site-a.toml: field 'tasks[1].image_size': must be a positive multiple of 32, got 50``.

Example::

    name = "hospital-a"            # optional, defaults to the file's stem
    state_dir = "state/hospital-a" # optional, relative to this file
    require_secure_aggregation = false  # true: refuse to send a plain (unmasked) update

    [[tasks]]
    name = "breast-ultrasound"     # letters, digits, '-' and '_'
    type = "classification"        # classification | multilabel | segmentation | detection |
                                   # self-supervised (unlabelled images: no classes)
    format = "npz"                 # see `umedpt.data.readers.formats_for(type)`
    path = "data/BreastMNIST.npz"  # relative to this file
    classes = ["malignant", "normal-or-benign"]
    image_size = 64                # square side the images are resized to
    batch_size = 16
    skip_bad_samples = false       # true: warn about and skip unreadable samples
    augment = "default"            # training only: "none" | "default" | {hflip = 0.5, ...}
    class_weighting = "none"       # classification: "balanced" weighs each class's loss by
                                   # n / (C * its training count); not with [privacy]

    [tasks.split]                  # used when the data itself has no split
    val = 0.15
    test = 0.15
    seed = 0
    group_pattern = '^(\\d+)_'      # optional: keep files sharing this match together

    [tasks.options]                # format-specific, see the reader's docstring
    key_prefix = ""

    [privacy]                      # optional: sample-level DP-SGD (docs/privacy.md)
    target_epsilon = 8.0           # the site's budget over the whole run
    target_delta = 1e-5            # below 1 / (training samples of the largest task)
    max_grad_norm = 1.0            # per-sample clipping norm
    accountant = "rdp"             # rdp | prv (Opacus' accountants)
    max_noise_multiplier = 5.0     # optional: above it the site sits the round out
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from umedpt.data.augment_config import AugmentConfig, default_augment, parse_augment
from umedpt.errors import ConfigError

SPLITS = ("train", "val", "test")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class SplitConfig:
    """How to split data that comes without a split (deterministic by seed)."""

    val: float = 0.15
    test: float = 0.15
    seed: int = 0
    group_pattern: str | None = None


@dataclass(frozen=True)
class TaskConfig:
    """One task of a site: what to learn and where its data is."""

    name: str
    type: str
    format: str
    path: Path
    classes: tuple[str, ...]
    image_size: int = 64
    batch_size: int = 16
    skip_bad_samples: bool = False
    split: SplitConfig = field(default_factory=SplitConfig)
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    source: Path = Path("<memory>")
    index: int = 0
    # The site's private state folder (set by the site file): readers keep site-local
    # secrets there, e.g. the key that pseudonymises DICOM patient IDs for splitting.
    state_dir: Path | None = None
    # Training-only augmentation (umedpt/data/augment_config.py); absent: DEFAULT_AUGMENT.
    augment: AugmentConfig = field(default_factory=default_augment)
    # "balanced": the loss weighs each class by n / (C * its training count), so an
    # imbalanced task trains for the balanced accuracy it is scored by (classification only).
    class_weighting: str = "none"
    # Derived, not configured: the weights themselves, filled from the training split when
    # the data is loaded (``TaskType.fit``); () trains unweighted.
    class_weights: tuple[float, ...] = ()

    @property
    def field_prefix(self) -> str:
        """How this task's fields are named in errors, e.g. ``tasks[0]``."""
        return f"tasks[{self.index}]"

    def error(self, field_name: str, problem: str) -> ConfigError:
        """A ConfigError naming this task's file and one of its fields."""
        return ConfigError(self.source, f"{self.field_prefix}.{field_name}", problem)


@dataclass(frozen=True)
class PrivacyConfig:
    """A site's ``[privacy]`` table: sample-level DP-SGD's budget (Opacus' names)."""

    target_epsilon: float
    target_delta: float
    max_grad_norm: float
    accountant: str = "rdp"  # "rdp" | "prv"
    # Above this noise multiplier the site sends mostly noise: it sits the round out
    # ("privacy budget exhausted") instead. None: no limit (a warning above 5).
    max_noise_multiplier: float | None = None


@dataclass(frozen=True)
class SiteConfig:
    """A site (hospital): a name, a private state folder and one or more tasks."""

    name: str
    file: Path
    state_dir: Path
    tasks: tuple[TaskConfig, ...]
    privacy: PrivacyConfig | None = None  # None: no [privacy] table, no DP
    # True: the site trains only for masked replies (docs/secure-aggregation.md); a plain
    # train message gets an error reply.
    require_secure_aggregation: bool = False


_TASK_FIELDS = {
    "name",
    "type",
    "format",
    "path",
    "classes",
    "image_size",
    "batch_size",
    "skip_bad_samples",
    "split",
    "options",
    "augment",
    "class_weighting",
}
CLASS_WEIGHTINGS = ("none", "balanced")
_SITE_FIELDS = {"name", "state_dir", "tasks", "privacy", "require_secure_aggregation"}
_SPLIT_FIELDS = {"val", "test", "seed", "group_pattern"}
_PRIVACY_FIELDS = {
    "target_epsilon",
    "target_delta",
    "max_grad_norm",
    "accountant",
    "max_noise_multiplier",
}
ACCOUNTANTS = ("rdp", "prv")  # Opacus' accountants a [privacy] table may name


def load_site_config(path: str | Path) -> SiteConfig:
    """Read and validate a site TOML file."""
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise ConfigError(file, "<file>", "site config file not found")
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(file, "<file>", f"not valid TOML: {exc}") from exc
    return parse_site_config(raw, file)


def parse_site_config(raw: Mapping[str, Any], file: Path) -> SiteConfig:
    """Validate an already-parsed TOML mapping; relative paths resolve against ``file``'s folder."""
    _reject_unknown(raw, _SITE_FIELDS, file, "")
    base = file.parent
    name = raw.get("name", file.stem)
    _check_name(name, file, "name")
    state_dir_raw = raw.get("state_dir", f".umedpt-state/{name}")
    if not isinstance(state_dir_raw, str) or not state_dir_raw:
        raise ConfigError(file, "state_dir", f"must be a path string, got {state_dir_raw!r}")
    tasks_raw = raw.get("tasks")
    if not isinstance(tasks_raw, list) or not tasks_raw:
        raise ConfigError(file, "tasks", "a site needs at least one [[tasks]] table")
    tasks = tuple(_parse_task(t, file, base, i) for i, t in enumerate(tasks_raw))
    seen: set[str] = set()
    for task in tasks:
        if task.name in seen:
            raise task.error("name", f"task name '{task.name}' is used twice in this site")
        seen.add(task.name)
    privacy = _parse_privacy(raw["privacy"], file) if "privacy" in raw else None
    if privacy is not None:
        for task in tasks:
            if task.class_weighting != "none":
                # The weights come from every training label: one sample more or less moves
                # every other sample's weight, which DP-SGD's per-sample bound does not cover.
                raise task.error(
                    "class_weighting",
                    "is not available with [privacy]: its weights depend on all the site's "
                    "labels, which DP-SGD's accounting does not cover",
                )
    secure_only = raw.get("require_secure_aggregation", False)
    if not isinstance(secure_only, bool):
        raise ConfigError(
            file, "require_secure_aggregation", f"must be true or false, got {secure_only!r}"
        )
    state_dir = (base / state_dir_raw).resolve()
    return SiteConfig(
        name=name,
        file=file,
        state_dir=state_dir,
        tasks=tuple(replace(task, state_dir=state_dir) for task in tasks),
        privacy=privacy,
        require_secure_aggregation=secure_only,
    )


def _parse_task(raw: Any, file: Path, base: Path, index: int) -> TaskConfig:
    prefix = f"tasks[{index}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(file, prefix, "must be a table ([[tasks]])")
    _reject_unknown(raw, _TASK_FIELDS, file, prefix + ".")
    for required in ("name", "type", "format", "path"):
        if required not in raw:
            raise ConfigError(file, f"{prefix}.{required}", "is required")
    name = raw["name"]
    _check_name(name, file, f"{prefix}.name")
    # Local imports: the task types and the readers are built on this module's dataclasses.
    from umedpt.data.readers import formats_for
    from umedpt.tasks import TASK_TYPES

    task_type = raw["type"]
    if task_type not in TASK_TYPES:
        raise ConfigError(
            file,
            f"{prefix}.type",
            f"must be one of {', '.join(TASK_TYPES.names())}, got {task_type!r}",
        )
    fmt = raw["format"]
    valid_formats = formats_for(task_type)
    if fmt not in valid_formats:
        raise ConfigError(
            file,
            f"{prefix}.format",
            f"{task_type} data can be read from {', '.join(valid_formats)}; got {fmt!r}",
        )
    path_raw = raw["path"]
    if not isinstance(path_raw, str) or not path_raw:
        raise ConfigError(file, f"{prefix}.path", f"must be a path string, got {path_raw!r}")
    # A type with min_classes = 0 has no classes (unlabelled images): the field is optional.
    min_classes = TASK_TYPES.get(task_type).min_classes
    if "classes" not in raw and min_classes > 0:
        raise ConfigError(file, f"{prefix}.classes", "is required")
    classes = raw.get("classes", [])
    if (
        not isinstance(classes, list)
        or (not classes and min_classes > 0)
        or not all(isinstance(c, str) and c for c in classes)
    ):
        raise ConfigError(file, f"{prefix}.classes", "must be a non-empty list of class names")
    if len(set(classes)) != len(classes):
        raise ConfigError(file, f"{prefix}.classes", "class names must be unique")
    if len(classes) < min_classes:
        raise ConfigError(
            file, f"{prefix}.classes", f"{task_type} needs at least {min_classes} classes"
        )
    image_size = _positive_int(raw.get("image_size", 64), file, f"{prefix}.image_size")
    if image_size % 32:
        raise ConfigError(
            file, f"{prefix}.image_size", f"must be a positive multiple of 32, got {image_size}"
        )
    batch_size = _positive_int(raw.get("batch_size", 16), file, f"{prefix}.batch_size")
    skip = raw.get("skip_bad_samples", False)
    if not isinstance(skip, bool):
        raise ConfigError(
            file, f"{prefix}.skip_bad_samples", f"must be true or false, got {skip!r}"
        )
    weighting = raw.get("class_weighting", "none")
    if weighting not in CLASS_WEIGHTINGS:
        raise ConfigError(
            file,
            f"{prefix}.class_weighting",
            f"must be one of {CLASS_WEIGHTINGS}, got {weighting!r}",
        )
    if weighting != "none" and task_type != "classification":
        raise ConfigError(
            file, f"{prefix}.class_weighting", f"applies to classification tasks, not {task_type}"
        )
    options = raw.get("options", {})
    if not isinstance(options, Mapping):
        raise ConfigError(file, f"{prefix}.options", "must be a table ([tasks.options])")
    return TaskConfig(
        name=name,
        type=task_type,
        format=fmt,
        path=(base / path_raw).resolve(),
        classes=tuple(classes),
        image_size=image_size,
        batch_size=batch_size,
        skip_bad_samples=skip,
        split=_parse_split(raw.get("split", {}), file, f"{prefix}.split"),
        options=MappingProxyType(dict(options)),
        source=file,
        index=index,
        augment=(
            parse_augment(raw["augment"], file, f"{prefix}.augment")
            if "augment" in raw
            else default_augment()
        ),
        class_weighting=weighting,
    )


def _parse_split(raw: Any, file: Path, prefix: str) -> SplitConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(file, prefix, "must be a table ([tasks.split])")
    _reject_unknown(raw, _SPLIT_FIELDS, file, prefix + ".")
    fractions = {}
    for key in ("val", "test"):
        value = raw.get(key, 0.15)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ConfigError(
                file, f"{prefix}.{key}", f"must be a fraction in [0, 1), got {value!r}"
            )
        fractions[key] = float(value)
    if fractions["val"] + fractions["test"] >= 1:
        raise ConfigError(file, prefix, "val + test must leave some data for training")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(file, f"{prefix}.seed", f"must be an integer, got {seed!r}")
    pattern = raw.get("group_pattern")
    if pattern is not None:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise ConfigError(file, f"{prefix}.group_pattern", f"not a valid regex: {exc}") from exc
    return SplitConfig(
        val=fractions["val"], test=fractions["test"], seed=seed, group_pattern=pattern
    )


def _parse_privacy(raw: Any, file: Path) -> PrivacyConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(file, "privacy", "must be a table ([privacy])")
    _reject_unknown(raw, _PRIVACY_FIELDS, file, "privacy.")
    for required in ("target_epsilon", "target_delta", "max_grad_norm"):
        if required not in raw:
            raise ConfigError(file, f"privacy.{required}", "is required in a [privacy] table")
    values = {}
    optional = [k for k in ("max_noise_multiplier",) if k in raw]
    for key in ("target_epsilon", "target_delta", "max_grad_norm", *optional):
        value = raw[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ConfigError(file, f"privacy.{key}", f"must be a positive number, got {value!r}")
        values[key] = float(value)
    if not values["target_delta"] < 1:
        raise ConfigError(
            file, "privacy.target_delta", f"must be in (0, 1), got {raw['target_delta']!r}"
        )
    accountant = raw.get("accountant", "rdp")
    if accountant not in ACCOUNTANTS:
        raise ConfigError(
            file,
            "privacy.accountant",
            f"must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}",
        )
    return PrivacyConfig(**values, accountant=accountant)


def _reject_unknown(raw: Mapping[str, Any], allowed: set[str], file: Path, prefix: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            file,
            prefix + unknown[0],
            f"unknown field (valid fields: {', '.join(sorted(allowed))})",
        )


def _check_name(name: Any, file: Path, field_name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            file, field_name, f"must use letters, digits, '-' and '_' only, got {name!r}"
        )


def _positive_int(value: Any, file: Path, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(file, field_name, f"must be a positive integer, got {value!r}")
    return value
