"""The run-state file the dashboard reads, written by the round loop (:mod:`server.federation`).

The state is the report (the same dict report.json is written from: settings as published,
the sites' self-descriptions, the rounds' records, privacy summaries) plus the live facts
only the round loop knows: which round is running and since when, how many rounds the run
has, when it first started and when it was resumed. Written at the start, after every
round and at the end; the file's format and its atomic replacement are
:mod:`dashboard.state`'s. A state that cannot be written costs the live view, never the
run (logged).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from logging import WARNING
from pathlib import Path
from typing import Any

from flwr.common.logger import log

from dashboard.state import RunFolderError, read_state, write_state


@dataclass
class LiveRun:
    """The live facts of a run; :meth:`write` adds them to a report and writes the state."""

    out: Path
    total_rounds: int
    started: float  # when the run first started (kept across resumptions)
    resumes: list[dict[str, Any]] = field(default_factory=list)  # [{after_round, time}]

    @classmethod
    def begin(
        cls, out: Path, total_rounds: int, *, run_key: str, resumed_after: int | None
    ) -> LiveRun:
        """The live facts of a run starting now, or of ``run_key`` resuming after a round
        (its first start and earlier resumptions are read back from its state file)."""
        now = time.time()
        if resumed_after is None:
            return cls(out, total_rounds, started=now)
        try:
            previous = read_state(out)
        except RunFolderError:  # a run of an older version, or a state file lost
            previous = {}
        if previous.get("config", {}).get("run-key") != run_key:
            previous = {}
        resumes = [*previous.get("resumes", []), {"after_round": resumed_after, "time": now}]
        return cls(out, total_rounds, float(previous.get("started", now)), resumes)

    def write(self, report: dict[str, Any], *, running_round: int | None) -> None:
        """The state of ``report`` with round ``running_round`` starting now (None, or a
        round past the last: none is running)."""
        now = time.time()
        if running_round is not None and running_round > self.total_rounds:
            running_round = None
        state = {
            **report,
            "total_rounds": self.total_rounds,
            "running_round": running_round,
            "round_started": now if running_round is not None else None,
            "started": self.started,
            "resumes": self.resumes,
            "updated": now,
        }
        try:
            write_state(self.out, state)
        except OSError as exc:
            log(WARNING, "the dashboard's run state was not written: %s", exc)
