"""Scalars as TensorBoard event files, written with torch's ``SummaryWriter``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path


class TensorBoardTracker:
    """Writes every scalar to event files in ``log_dir`` (``tensorboard --logdir``).

    A resumed run appends a new event file to the same folder; its steps continue where
    the first stopped, so TensorBoard shows one curve. TensorBoard keeps no files:
    ``log_artifact`` does nothing (the files are in the run's output folder already).
    Non-finite values are skipped: TensorBoard would draw them as gaps or spikes.
    """

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))
        self.where = f"TensorBoard event files (tensorboard --logdir {self.log_dir})"

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for tag, value in scalars.items():
            if math.isfinite(value := float(value)):
                self._writer.add_scalar(tag, value, global_step=step)
        self._writer.flush()  # a stopped coordinator keeps its charts up to the last round

    def log_artifact(self, path: Path) -> None:
        pass

    def close(self) -> None:
        self._writer.close()
