"""A tracker from a :class:`TrackingConfig`, and the check a command runs before it starts."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from urllib.parse import urlsplit

from umedpt.tracking.base import (
    MLFLOW_URI_ENV,
    NullTracker,
    Tracker,
    TrackingConfig,
    TrackingError,
    TrackingKind,
)

TENSORBOARD_DIR = "tensorboard"  # <out>/tensorboard: where a run's event files go


def check_tracking(config: TrackingConfig) -> None:
    """Raise TrackingError, saying what to do, when ``config`` cannot work on this machine.

    Commands call this before a run starts, so a missing package or URI is an error at
    once (exit code 2), not after the federation's first round.
    """
    if config.kind == TrackingKind.TENSORBOARD and importlib.util.find_spec("tensorboard") is None:
        raise TrackingError(
            "--tracking tensorboard needs the tensorboard package: pip install tensorboard "
            "(it is a dependency of umedpt-fl; reinstall it), or pass --tracking none"
        )
    if config.kind != TrackingKind.MLFLOW:
        return
    if importlib.util.find_spec("mlflow") is None:
        raise TrackingError(
            "--tracking mlflow needs MLflow, which is not installed: "
            "pip install 'umedpt-fl[tracking]' (or pip install mlflow-skinny), "
            "or choose --tracking tensorboard (the default) or --tracking none"
        )
    uri = config.resolved_uri()
    if not uri:
        raise TrackingError(
            f"--tracking mlflow needs a tracking URI: pass --tracking-uri (e.g. "
            f"http://mlflow.example.org:5000 or sqlite:///mlflow.db) or set {MLFLOW_URI_ENV}"
        )
    parts = urlsplit(uri)
    if parts.username or parts.password or parts.query:
        raise TrackingError(
            "the tracking URI holds a user name, password or query (where tokens hide), which "
            "would be written to report.json and the "
            "run config; give the URI without it and set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead"
        )


def create_tracker(config: TrackingConfig, *, log_dir: Path) -> Tracker:
    """The tracker ``config`` asks for; TensorBoard writes its event files in ``log_dir``."""
    check_tracking(config)
    if config.kind == TrackingKind.TENSORBOARD:
        from umedpt.tracking.tensorboard_tracker import TensorBoardTracker

        return TensorBoardTracker(log_dir)
    if config.kind == TrackingKind.MLFLOW:
        from umedpt.tracking.mlflow_tracker import MlflowTracker

        return MlflowTracker(config)
    return NullTracker()
