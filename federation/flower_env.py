"""The environment every Flower process of ours runs with: no telemetry, no installs.

Flower reads ``FLWR_TELEMETRY_ENABLED`` once, when it is imported, and sends usage events
unless it is "0"; a hospital's tool must not phone home. Child processes (SuperLink,
SuperNode, `flwr run`, Ray workers) inherit the environment, so setting it in our own
process before Flower is imported covers them all. Runtime dependency installation is
off too: the code is preinstalled, and sites are often offline.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

FLOWER_ENV: Mapping[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


def disable_flower_telemetry() -> None:
    """Set :data:`FLOWER_ENV` in this process (and so in every child it starts)."""
    os.environ.update(FLOWER_ENV)


def flower_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for a Flower child process: ``base`` (default: ours) plus FLOWER_ENV."""
    return {**(os.environ if base is None else base), **FLOWER_ENV}
