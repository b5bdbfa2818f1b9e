"""What every tracker offers, how a run asks for one, and the trackers that need no backend."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol, runtime_checkable

from umedpt.errors import ConfigError, UmedptError

log = logging.getLogger(__name__)

MLFLOW_URI_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own variable, read when --tracking-uri is empty


class TrackingKind(StrEnum):
    """Where a run's scalars go (``--tracking``)."""

    TENSORBOARD = "tensorboard"  # event files in <out>/tensorboard (the default)
    MLFLOW = "mlflow"  # an MLflow tracking server or store (needs mlflow and a URI)
    NONE = "none"  # nowhere (report.json and metrics.jsonl are still written)


class TrackingError(UmedptError):
    """The tracking a run asked for cannot be set up; the message says what to do instead."""


@dataclass(frozen=True)
class TrackingConfig:
    """Which tracker a run gets: parsed once, at the edge (a flag, the run config)."""

    kind: str = TrackingKind.TENSORBOARD.value
    uri: str = ""  # MLflow tracking URI; "" = $MLFLOW_TRACKING_URI
    experiment: str = "umedpt-fl"  # MLflow experiment
    run_name: str = ""  # MLflow run name; "" = MLflow's own

    def __post_init__(self) -> None:
        valid = [k.value for k in TrackingKind]
        if self.kind not in valid:
            raise ConfigError(
                "--tracking", "tracking", f"must be one of {', '.join(valid)}, got {self.kind!r}"
            )

    def resolved_uri(self) -> str:
        """The MLflow tracking URI: ``uri``, else ``$MLFLOW_TRACKING_URI``, else ""."""
        return self.uri or os.environ.get(MLFLOW_URI_ENV, "")


@runtime_checkable
class Tracker(Protocol):
    """A run's scalars per step, and files at its end. Keys are '/'-separated tags.

    ``where`` tells a person where to look (for the log and report.json).
    """

    where: str

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def log_artifact(self, path: Path) -> None: ...

    def close(self) -> None: ...


class NullTracker:
    """Tracks nothing (``--tracking none``), so callers never test for a missing tracker."""

    where = "nowhere (--tracking none)"

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        pass

    def log_artifact(self, path: Path) -> None:
        pass

    def close(self) -> None:
        pass


class GuardedTracker:
    """A tracker whose failures are logged, not raised.

    A federation may have run for hours when its MLflow server goes away: losing the
    charts must not lose the run. The first failure is logged with what went wrong and
    the tracker is switched off; the run's report.json still has every value.
    """

    def __init__(self, inner: Tracker) -> None:
        self.inner = inner
        self.failed = False
        self.where = inner.where

    def _call(self, what: str, *args: object) -> None:
        if self.failed:
            return
        try:
            getattr(self.inner, what)(*args)
        except Exception as exc:  # a backend's own errors: network, store, disk
            self.failed = True
            log.warning(
                "run tracking (%s) failed and is off for the rest of the run: %s: %s",
                type(self.inner).__name__,
                type(exc).__name__,
                exc,
            )

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self._call("log_scalars", step, scalars)

    def log_artifact(self, path: Path) -> None:
        self._call("log_artifact", path)

    def close(self) -> None:
        self._call("close")
