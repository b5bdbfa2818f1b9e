"""The hospital side: a Flower ClientApp over the umedpt trainer, and the `client` command."""

from umedpt_fl.flower_env import disable_flower_telemetry

disable_flower_telemetry()  # before any module of this package imports Flower
