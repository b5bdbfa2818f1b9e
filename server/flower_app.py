"""The Flower app definition that `flwr run` submits.

`flwr run` needs a folder with a pyproject.toml naming the ServerApp and ClientApp. The
code itself is already installed (SuperLink and SuperNodes run with runtime dependency
installation disabled: hospitals are often offline), so the app folder holds only that
file, written from the run's settings.

Flower hands the app's config to every site, so it lists the sites' settings alone
(:meth:`federation.settings.RunSettings.for_sites`): no tracking URI, no path of the
coordinator, no other site's path. The ServerApp, which runs on the coordinator's machine,
reads the whole settings from a file in the coordinator's output folder
(:func:`federation.settings.write_server_settings`).
"""

from __future__ import annotations

from pathlib import Path

import tomli_w

from federation.settings import RunSettings
from umedpt import __version__


def app_pyproject(settings: RunSettings) -> dict:
    """The pyproject.toml of a run, as a mapping; its config is what every site is given."""
    return {
        "build-system": {"requires": ["setuptools>=68"], "build-backend": "setuptools.build_meta"},
        "project": {
            "name": "umedpt-fl-run",
            "version": __version__,
            "description": "umedpt-fl federated pretraining (code installed on every machine)",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "umedpt-fl",
                    "components": {"serverapp": "server.app:app", "clientapp": "client.app:app"},
                    "config": settings.for_sites(),
                }
            }
        },
    }


def write_app_dir(folder: Path, settings: RunSettings) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_bytes(tomli_w.dumps(app_pyproject(settings)).encode())
    return folder
