"""The coordinator's Flower ServerApp: a thin layer over ``server.federation.run_federation``."""

from __future__ import annotations

from federation.entry import enter_app_process

enter_app_process()  # before Flower and torch are imported: see federation.entry

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from federation.settings import server_settings_for_app
from server.federation import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    # The app config holds the sites' settings only; the rest comes from the coordinator's
    # settings file (federation.settings.SERVER_SETTINGS_ENV), or simulate's environment.
    run_federation(grid, server_settings_for_app(context.run_config))
