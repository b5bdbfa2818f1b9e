"""Run tracking: per-step scalars and final artifacts, to TensorBoard, MLflow or nowhere.

Used by ``pretrain`` (the ML core) and by the coordinator's round loop, so nothing here
imports Flower; the backends (``torch.utils.tensorboard``, ``mlflow``) are imported only
when a tracker of theirs is created. Build a tracker with :func:`create_tracker` from a
:class:`TrackingConfig`; every tracker has the same three methods (:class:`Tracker`).
"""

from __future__ import annotations

from umedpt.tracking.base import (
    GuardedTracker,
    NullTracker,
    Tracker,
    TrackingConfig,
    TrackingError,
    TrackingKind,
)
from umedpt.tracking.factory import TENSORBOARD_DIR, check_tracking, create_tracker

__all__ = [
    "TENSORBOARD_DIR",
    "GuardedTracker",
    "NullTracker",
    "Tracker",
    "TrackingConfig",
    "TrackingError",
    "TrackingKind",
    "check_tracking",
    "create_tracker",
]
