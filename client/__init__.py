"""The hospital side: a Flower ClientApp over the umedpt trainer, and the `client` command."""

from umedpt_fl.flower_env import disable_flower_telemetry
from umedpt_fl.processes import follow_supervisor

disable_flower_telemetry()  # before any module of this package imports Flower
# A Flower app process (flwr-clientapp) started for a supervised command exits when that
# command is gone from the first import of this package on, not only once a message
# handler runs: the seconds spent importing torch are when Flower's own parent monitor
# (a SIGINT) was seen to leave an orphan. A no-op in every other process.
follow_supervisor()
