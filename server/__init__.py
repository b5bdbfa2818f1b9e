"""The coordinator side: the Flower ServerApp, its round loop, state, report, `server` command."""

from umedpt_fl.flower_env import disable_flower_telemetry

disable_flower_telemetry()  # before any module of this package imports Flower
