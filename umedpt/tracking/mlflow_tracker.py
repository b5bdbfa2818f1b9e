"""Scalars and files to an MLflow tracking server or store, via ``MlflowClient``.

The client API, not ``mlflow.start_run``: no process-wide active run, so a tracker can
live inside a ServerApp (or a test) without touching anyone else's MLflow state.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from umedpt.tracking.base import TrackingConfig

# MLflow accepts letters, digits, '_', '-', '.', ' ', '/' and ':' in metric names; a site
# filed as "name (node 12)" must not fail a round's logging.
_UNSAFE = re.compile(r"[^\w\-. /:]")


def metric_key(tag: str) -> str:
    """``tag`` with the characters MLflow refuses replaced by ``_``."""
    return _UNSAFE.sub("_", tag)


class MlflowTracker:
    """One MLflow run in ``config.experiment``, created when the tracker is.

    ``config.resolved_uri()`` must be set (checked by :func:`umedpt.tracking.check_tracking`).
    MLflow's usage telemetry is switched off before it is imported: nothing this project
    runs phones home.
    """

    def __init__(self, config: TrackingConfig) -> None:
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
        from mlflow.tracking import MlflowClient

        self.uri = config.resolved_uri()
        self._client: Any = MlflowClient(tracking_uri=self.uri)
        experiment = self._client.get_experiment_by_name(config.experiment)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self._client.create_experiment(config.experiment)
        )
        run = self._client.create_run(experiment_id, run_name=config.run_name or None)
        self.run_id: str = run.info.run_id
        self.where = f"MLflow run {self.run_id} (experiment {config.experiment!r}) at {self.uri}"

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(metric_key(tag), value, now, step)
            for tag, raw in scalars.items()
            if math.isfinite(value := float(raw))
        ]
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit
            self._client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def log_artifact(self, path: Path) -> None:
        """A file, or a folder (kept under its own name, e.g. ``global/``)."""
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
        else:
            self._client.log_artifact(self.run_id, str(path))

    def close(self) -> None:
        self._client.set_terminated(self.run_id)
