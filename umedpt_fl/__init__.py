"""umedpt_fl: what the federation's client and server share, and the composition root.

Shared by both sides (neither owns them): the wire format (``wire``), the run settings
(``settings``), process supervision (``processes``) and Flower's environment
(``flower_env``). Composing both sides: the command table (``cli``), the simulation
(``simulation``) and the in-process grid (``inprocess``). ``client/`` and ``server/``
never import each other, nor this package's composing modules.
"""

from umedpt_fl.flower_env import disable_flower_telemetry

disable_flower_telemetry()  # before any module of the federation imports Flower
