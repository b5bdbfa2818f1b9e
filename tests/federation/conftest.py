from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from umedpt.data.demo import write_demo_federation


@pytest.fixture(scope="session")
def demo_sites(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Small demo sites (30 images each), written once per test session."""
    return write_demo_federation(tmp_path_factory.mktemp("demo"), seed=0, images_per_site=30)


@pytest.fixture
def site_log() -> Iterator[Callable[[], list[str]]]:
    """The lines the site logs through Flower's logger (its log, ``supernode.log``), each
    with its traceback where it has one."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit = lambda record: lines.append(handler.format(record))  # type: ignore[method-assign]
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lambda: list(lines)
    logger.removeHandler(handler)
    logger.setLevel(level)
