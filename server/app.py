"""The coordinator's Flower ServerApp: a thin layer over ``server.federation.run_federation``."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.federation import run_federation
from umedpt_fl.processes import follow_supervisor
from umedpt_fl.settings import settings_for_app

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    follow_supervisor()  # a killed coordinator must not leave this process driving sites
    run_federation(grid, settings_for_app(context.run_config))
