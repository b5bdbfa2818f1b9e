"""The Flower app definition that `flwr run` submits.

`flwr run` needs a folder with a pyproject.toml naming the ServerApp and ClientApp. The
code itself is already installed (SuperLink and SuperNodes run with runtime dependency
installation disabled: hospitals are often offline), so the app folder holds only that
file, written from the run's settings.
"""

from __future__ import annotations

from pathlib import Path

from umedpt import __version__
from umedpt.run_config import RunSettings


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def write_app_dir(folder: Path, settings: RunSettings) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = "\n".join(f"{k} = {_toml_value(v)}" for k, v in settings.to_run_config().items())
    (folder / "pyproject.toml").write_text(
        f"""[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "umedpt-fl-run"
version = "{__version__}"
description = "umedpt-fl federated pretraining (code installed on every machine)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "umedpt-fl"

[tool.flwr.app.components]
serverapp = "server.app:app"
clientapp = "client.app:app"

[tool.flwr.app.config]
{config}
"""
    )
    return folder
