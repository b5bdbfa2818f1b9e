"""The environment every Flower process of ours runs with: no telemetry, no installs.

Flower reads ``FLWR_TELEMETRY_ENABLED`` once, when it is imported, and sends usage events
unless it is "0"; a hospital's tool must not phone home. Child processes (SuperLink,
SuperNode, `flwr run`, Ray workers) inherit the environment, so setting it in our own
process before Flower is imported covers them all. Runtime dependency installation is
off too: the code is preinstalled, and sites are often offline.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path

FLOWER_ENV: Mapping[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


def disable_flower_telemetry() -> None:
    """Set :data:`FLOWER_ENV` in this process (and so in every child it starts)."""
    os.environ.update(FLOWER_ENV)


# Variables that make a SuperLink open its Control API (which has no authentication in
# open-source Flower) on a listener of its own, outside the gateway: forced off in every
# Flower process we start, whatever the operator's environment says.
CONTROL_LISTENERS_OFF: Mapping[str, str] = {"FLWR_INTERNAL_GRPC_CONTROL_API": "0"}


def interpreter_bin_folders() -> list[str]:
    """Where this Python's scripts are (a virtualenv's ``bin/``), and the interpreter's folder."""
    folders = [sysconfig.get_path("scripts"), str(Path(sys.executable).parent)]
    return list(dict.fromkeys(folders))


def flower_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for a Flower child process: ``base`` (default: ours) plus FLOWER_ENV.

    The interpreter's script folder comes first on PATH: Flower's processes start each
    other by name (the SuperLink starts ``flower-superexec``, the SuperNode
    ``flwr-clientapp``), and under systemd or any bare PATH the virtualenv's ``bin/`` is not
    on it. Control-API listeners are forced off (:data:`CONTROL_LISTENERS_OFF`).
    """
    env = {**(os.environ if base is None else base), **FLOWER_ENV, **CONTROL_LISTENERS_OFF}
    rest = [p for p in env.get("PATH", "").split(os.pathsep) if p]
    first = interpreter_bin_folders()
    env["PATH"] = os.pathsep.join([*first, *(p for p in rest if p not in first)])
    return env
