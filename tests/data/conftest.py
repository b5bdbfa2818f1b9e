"""Tiny on-disk fixtures for the data tests (fixtures, so they work in any pytest import mode)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from PIL import Image

from umedpt.config import SplitConfig, TaskConfig


def _make_task(
    tmp_path: Path,
    *,
    type: str,
    format: str,
    path: Path,
    classes: tuple[str, ...],
    image_size: int = 32,
    skip_bad_samples: bool = False,
    split: SplitConfig | None = None,
    options: dict[str, Any] | None = None,
) -> TaskConfig:
    return TaskConfig(
        name="t",
        type=type,
        format=format,
        path=path,
        classes=classes,
        image_size=image_size,
        skip_bad_samples=skip_bad_samples,
        split=split or SplitConfig(),
        options=MappingProxyType(dict(options or {})),
        source=tmp_path / "site.toml",
    )


def _save_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr) if mode is None else Image.fromarray(arr, mode=mode)
    img.save(path)
    return path


def _grey(h: int, w: int, value: int = 100) -> np.ndarray:
    return np.full((h, w), value, dtype=np.uint8)


def _voc_xml(stem: str, objects: list[tuple[str, tuple[float, float, float, float]]]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    return f"<annotation><filename>{stem}.png</filename>{objs}</annotation>"


def _write_voc(
    root: Path, items: dict[str, tuple[tuple[int, int], list[tuple[str, tuple]]]]
) -> Path:
    """items: stem -> ((height, width), [(class, (x0, y0, x1, y1)), ...])."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for stem, ((h, w), objects) in items.items():
        _save_png(root / "JPEGImages" / f"{stem}.png", _grey(h, w))
        (root / "Annotations" / f"{stem}.xml").write_text(_voc_xml(stem, objects))
    return root


@pytest.fixture
def make_task(tmp_path: Path) -> Callable[..., TaskConfig]:
    """Build a TaskConfig whose site file is ``tmp_path/site.toml``."""
    return lambda **kw: _make_task(tmp_path, **kw)


@pytest.fixture
def save_png() -> Callable[..., Path]:
    return _save_png


@pytest.fixture
def grey() -> Callable[..., np.ndarray]:
    return _grey


@pytest.fixture
def write_voc() -> Callable[..., Path]:
    return _write_voc
