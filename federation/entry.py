"""What a process of ours does first, once, where it starts.

Two kinds of process run our code: a ``umedpt-fl`` command (:mod:`umedpt_fl.cli`), and a
process that Flower starts to run our apps (``flwr-clientapp``, ``flwr-serverapp``, a Ray
worker, or the in-process grid), which loads ``client.app`` or ``server.app``. Each calls
one function below at the top of that module, before it imports Flower or torch; no
package does it as a side effect of being imported.
"""

from __future__ import annotations

from federation.flower_env import disable_flower_telemetry
from federation.processes import follow_supervisor


def enter_command_process() -> None:
    """A ``umedpt-fl`` command: no Flower telemetry here or in any child it starts."""
    disable_flower_telemetry()


def enter_app_process() -> None:
    """A Flower app process: no telemetry, and exit when the supervising command is gone.

    The watchdog starts before the app module imports torch: the seconds spent importing
    it are when Flower's own parent monitor (a SIGINT) was seen to leave an orphan. It is a
    no-op in a process no command of ours supervises.
    """
    disable_flower_telemetry()
    follow_supervisor()
