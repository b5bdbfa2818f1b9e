"""A task's training augmentation policy: a frozen dataclass, its named presets and its parser.

A site file sets it per task::

    [[tasks]]
    augment = "default"                          # or "none"
    augment = {hflip = 0.5, scale = [0.8, 1.0]}  # a table of AugmentConfig's fields
    augment = {base = "default", hflip = 0.5}    # a preset with some fields changed

A table's fields that are not given come from ``base`` ("none" unless named), so a table
is exactly what it says. A task without the field gets :data:`DEFAULT_AUGMENT`.

This module holds the configuration only (no torch): :mod:`umedpt.data.augment` turns it
into transforms, and each task type keeps its targets aligned with the image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from umedpt.errors import ConfigError

if TYPE_CHECKING:
    from umedpt.config import SiteConfig, TaskConfig


class AugmentFieldError(ValueError):
    """One field of an :class:`AugmentConfig` is out of range; the parser names its site file."""

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"augment.{field}: {problem}")


@dataclass(frozen=True)
class AugmentConfig:
    """Random changes to a training image, each off at its zero value.

    Geometric ones (crop, flips, rotation) move masks and boxes with the image; photometric
    ones (the colour jitter factors, as torchvision's ``ColorJitter`` reads them) touch the
    image only. Applied in this order: crop, flips, rotation, colour.
    """

    hflip: float = 0.0  # probability of a left-right flip
    vflip: float = 0.0  # probability of an upside-down flip
    rotate: float = 0.0  # degrees: the angle is uniform in [-rotate, rotate]
    # Fraction of the image's area a square crop keeps (uniform in [lo, hi]), resized back
    # to the image size: a random zoom-in and shift. (1, 1) keeps the whole image.
    scale: tuple[float, float] = (1.0, 1.0)
    brightness: float = 0.0  # factor uniform in [max(0, 1 - b), 1 + b]
    contrast: float = 0.0
    saturation: float = 0.0  # no effect on grey images; costs ~1 ms per image
    hue: float = 0.0  # in [0, 0.5]; costs ~1 ms per image

    def __post_init__(self) -> None:
        if len(self.scale) != 2:
            raise AugmentFieldError("scale", f"must be [lo, hi], got {self.scale!r}")
        object.__setattr__(self, "scale", (float(self.scale[0]), float(self.scale[1])))
        for name in ("hflip", "vflip"):
            _check(0 <= getattr(self, name) <= 1, name, "must be a probability in [0, 1]", self)
        _check(0 <= self.rotate <= 180, "rotate", "must be degrees in [0, 180]", self)
        lo, hi = self.scale
        _check(0 < lo <= hi <= 1, "scale", "must be [lo, hi] with 0 < lo <= hi <= 1", self)
        for name in ("brightness", "contrast", "saturation"):
            _check(0 <= getattr(self, name) < math.inf, name, "must be a number >= 0", self)
        _check(0 <= self.hue <= 0.5, "hue", "must be in [0, 0.5]", self)

    @property
    def is_identity(self) -> bool:
        """True when nothing is ever changed: the stream then skips augmentation entirely."""
        return self == AugmentConfig()


def _check(ok: bool, name: str, problem: str, config: AugmentConfig) -> None:
    if not ok:
        raise AugmentFieldError(name, f"{problem}, got {getattr(config, name)!r}")


# Why this "default" is conservative: pretraining pools many modalities whose labels may
# depend on orientation. A left-right flip swaps laterality (a chest X-ray's heart side, a
# "left effusion" label, dextrocardia) and an upside-down flip or a large rotation shows an
# anatomy no scanner produces, so neither flip is on. What is kept varies with acquisition,
# not with the label: patient positioning (a small rotation, +-10 degrees, and a crop
# keeping >= 80% of the area) and exposure / gain (brightness and contrast +-20%). Colour
# (saturation, hue) stays off: most images are grey, and stain colour in pathology can carry
# the label. A rotation widens boxes (the box of a rotated box), by at most ~16% at 10 degrees.
AUGMENT_POLICIES: Mapping[str, AugmentConfig] = {
    "none": AugmentConfig(),
    "default": AugmentConfig(rotate=10.0, scale=(0.8, 1.0), brightness=0.2, contrast=0.2),
}

# The policy of a task whose site file has no ``augment`` field. Which one is the better
# default is for the recipe benchmark to decide; changing it is this one line.
DEFAULT_AUGMENT = "none"


def augment_policy(name: str) -> AugmentConfig:
    """The named policy ("none" or "default"); ValueError lists the names."""
    if name not in AUGMENT_POLICIES:
        raise ValueError(f"unknown augment policy {name!r}; valid: {', '.join(AUGMENT_POLICIES)}")
    return AUGMENT_POLICIES[name]


def default_augment() -> AugmentConfig:
    """The policy of a task that names none (:data:`DEFAULT_AUGMENT`)."""
    return augment_policy(DEFAULT_AUGMENT)


_FIELDS = tuple(f.name for f in fields(AugmentConfig))


def parse_augment(raw: Any, file: Path, prefix: str) -> AugmentConfig:
    """A site file's ``augment`` value (a policy name or a table) at field ``prefix``."""
    if isinstance(raw, str):
        if raw not in AUGMENT_POLICIES:
            raise ConfigError(
                file,
                prefix,
                f"must be one of {', '.join(AUGMENT_POLICIES)} or a table, got {raw!r}",
            )
        return AUGMENT_POLICIES[raw]
    if not isinstance(raw, Mapping):
        raise ConfigError(file, prefix, f"must be a policy name or a table, got {raw!r}")
    allowed = ("base", *_FIELDS)
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ConfigError(
            file, f"{prefix}.{unknown[0]}", f"unknown field (valid fields: {', '.join(allowed)})"
        )
    base = raw.get("base", "none")
    if base not in AUGMENT_POLICIES:
        raise ConfigError(
            file, f"{prefix}.base", f"must be one of {', '.join(AUGMENT_POLICIES)}, got {base!r}"
        )
    values: dict[str, Any] = {}
    for name in _FIELDS:
        if name not in raw:
            continue
        value = raw[name]
        if name == "scale":
            if not (isinstance(value, list) and len(value) == 2 and all(map(_is_number, value))):
                raise ConfigError(
                    file,
                    f"{prefix}.scale",
                    f"must be a list [lo, hi] of two numbers, got {value!r}",
                )
            values[name] = (float(value[0]), float(value[1]))
        elif _is_number(value):
            values[name] = float(value)
        else:
            raise ConfigError(file, f"{prefix}.{name}", f"must be a number, got {value!r}")
    try:
        return replace(AUGMENT_POLICIES[base], **values)
    except AugmentFieldError as exc:
        raise ConfigError(file, f"{prefix}.{exc.field}", exc.problem) from exc


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def as_augment(augment: str | AugmentConfig) -> AugmentConfig:
    """A policy name or a config, as a config."""
    return augment_policy(augment) if isinstance(augment, str) else augment


def with_augment(site: SiteConfig, augment: str | AugmentConfig) -> SiteConfig:
    """``site`` with every task's policy set to ``augment`` (a benchmark turning it on)."""
    policy = as_augment(augment)
    return replace(site, tasks=tuple(replace(t, augment=policy) for t in site.tasks))


def task_with_augment(task: TaskConfig, augment: str | AugmentConfig) -> TaskConfig:
    """``task`` with its policy set to ``augment``."""
    return replace(task, augment=as_augment(augment))
