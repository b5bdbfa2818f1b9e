"""The coordinator's Flower ServerApp: a thin layer over ``server.federation.run_federation``."""

from __future__ import annotations

import json
import os
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from client.app import RUN_CONFIG_ENV
from server.federation import run_federation
from umedpt.run_config import RunSettings

app = ServerApp()


def run_settings(context: Context) -> RunSettings:
    values: dict[str, Any] = dict(context.run_config)
    if overrides := os.environ.get(RUN_CONFIG_ENV):
        values.update(json.loads(overrides))
    return RunSettings.from_run_config(values)


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_federation(grid, run_settings(context))
