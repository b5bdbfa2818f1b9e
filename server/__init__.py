"""The coordinator side: the Flower ServerApp, simulation and the `server`/`simulate` commands."""
