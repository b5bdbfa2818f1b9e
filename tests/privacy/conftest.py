from __future__ import annotations

from pathlib import Path

import pytest

from umedpt.data.demo import write_demo_federation


@pytest.fixture(scope="session")
def demo_sites(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Small demo sites (30 images each), written once per test session."""
    return write_demo_federation(tmp_path_factory.mktemp("demo"), seed=0, images_per_site=30)
