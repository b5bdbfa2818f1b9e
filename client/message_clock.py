"""Where one message's time goes at a site, for its log and ``sent.jsonl``.

A round on real processes can cost many times what the site trains (process start-up,
imports, polling); these stages say where. Measured in the ClientApp process on the wall
clock; ``received`` compares with the message's creation time on the coordinator, so it
is exact on one machine and off by the clocks' difference across machines.

Stages, in order (seconds; a stage the message did not go through is left out):

- ``received``: from the coordinator creating the message to this app process starting
  (SuperLink, the SuperNode's poll, the executor handing the message to a process); in a
  process that serves many messages (simulation, tests), to the handler running;
- ``app_up``: from the process starting to the handler running (imports, Flower pulling
  the message): the cost a long-lived app host (:mod:`client.app_host`) removes. Only in
  a process started for the message: a ``flwr-clientapp`` or a child of the app host;
- ``model_built``: the site's runner (model, trainer, data from the site's cache);
- ``state_restored``: the site's local state of its previous round;
- ``trained``: the local steps;
- ``reply_built``: the rest until the reply is logged (weights loaded and read back, state
  saved, encoding); Flower sends it when the handler returns.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Set by the app host in each child it forks for a message (client.app_host).
MESSAGE_PROCESS_ENV = "UMEDPT_FL_MESSAGE_PROCESS"
STAGES = ("received", "app_up", "model_built", "state_restored", "trained", "reply_built")
STAGE_WORDS = {
    "received": "received",
    "app_up": "app process up",
    "model_built": "model built",
    "state_restored": "state restored",
    "trained": "trained",
    "reply_built": "reply built",
}


def _boot_time() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    return None


def process_started(pid: int | None = None) -> float | None:
    """When process ``pid`` (this one by default) started, on the wall clock; None where
    /proc cannot say. A forked child's start is its fork. Resolution: the kernel's tick
    (10 ms)."""
    boot = _boot_time()
    if boot is None:
        return None
    try:
        stat = Path(f"/proc/{pid or os.getpid()}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22 of proc(5): starttime
    except (OSError, ValueError, IndexError):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def message_process_started() -> float | None:
    """When this process started, if it was started for one message (a ``flwr-clientapp``
    of Flower's subprocess isolation, or a child of our app host); else None."""
    if os.environ.get(MESSAGE_PROCESS_ENV) or Path(sys.argv[0]).name == "flwr-clientapp":
        return process_started()
    return None


@dataclass
class MessageClock:
    """The stages of one message, started when its handler runs."""

    created: float | None = None  # the message's creation on the coordinator (wall clock)
    process: float | None = field(default_factory=message_process_started)
    entered: float = field(default_factory=time.time)
    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name``."""
        tic = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - tic

    def timings(self) -> dict[str, float]:
        """Every stage measured so far, in order, rounded to milliseconds; ``reply_built``
        is what the handler spent outside its timed stages."""
        now = time.time()
        out: dict[str, float] = {}
        if self.created:
            arrived = self.process if self.process is not None else self.entered
            out["received"] = max(0.0, arrived - self.created)
        if self.process is not None:
            out["app_up"] = max(0.0, self.entered - self.process)
        timed = {k: v for k, v in self.seconds.items() if k in STAGES}
        out.update(timed)
        if "trained" in timed:
            out["reply_built"] = max(0.0, now - self.entered - sum(timed.values()))
        out = {k: round(out[k], 3) for k in STAGES if k in out}
        out["handler"] = round(now - self.entered, 3)  # the handler, from entry to this log
        return out


def describe(timings: dict[str, float]) -> str:
    """``received 0.4 s, app process up 0.1 s, ...`` for the site's log line."""
    parts = [f"{STAGE_WORDS[k]} {v:.1f} s" for k, v in timings.items() if k in STAGE_WORDS]
    return ", ".join(parts)
