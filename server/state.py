"""The server's checkpoint after every round: shared weights, strategy state, history.

One folder in the project's checkpoint format (:mod:`umedpt.checkpoint`: the weights with
their model config), plus the strategy's optimizer state and the run's progress, written
atomically together, so a run killed at any moment can ``--resume`` from its last
completed round.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save as numpy_bytes

from umedpt.checkpoint import committed_folder, load_state, read_header, save_weights
from umedpt.models.presets import ModelConfig

SERVER_STATE = "server-state"  # <out>/server-state/: the checkpoint after every round
GLOBAL_CHECKPOINT = "global"  # <out>/global/: the final shared weights
STRATEGY = "strategy.safetensors"
PROGRESS = "progress.json"


class RunExistsError(RuntimeError):
    """The output folder holds another run: resume it or choose another folder."""


@dataclass
class ServerProgress:
    """Everything besides the weights needed to continue a run exactly."""

    completed_round: int
    run_key: str
    settings: dict[str, Any]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    sites: dict[str, Any] = field(default_factory=dict)


def save_server_state(
    folder: Path,
    weights: dict[str, torch.Tensor],
    config: ModelConfig,
    strategy_state: dict[str, np.ndarray],
    progress: ServerProgress,
) -> None:
    strategy = {k: np.ascontiguousarray(v) for k, v in strategy_state.items()}
    save_weights(
        folder,
        weights,
        config,
        meta={
            "kind": "server-state",
            "round": progress.completed_round,
            "run_key": progress.run_key,
        },
        extra_files={
            STRATEGY: numpy_bytes(strategy),
            PROGRESS: json.dumps(asdict(progress), indent=1, default=str).encode(),
        },
    )


def read_progress(folder: Path) -> ServerProgress | None:
    """The run's progress in ``folder`` (a checkpoint, see ``committed_folder``), or None."""
    found = committed_folder(folder)
    if found is None or not (found / PROGRESS).is_file():
        return None
    return ServerProgress(**json.loads((found / PROGRESS).read_text()))


def has_server_state(folder: Path) -> bool:
    """Whether ``folder`` holds a run to resume."""
    return read_progress(folder) is not None


def load_server_state(
    folder: Path,
) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray], ServerProgress]:
    progress = read_progress(folder)
    found = committed_folder(folder)
    if progress is None or found is None:
        raise FileNotFoundError(f"{folder}: no server checkpoint to resume from")
    folder = found
    read_header(folder)  # a clear error for a folder of another format or version
    strategy_file = folder / STRATEGY
    strategy_state = load_numpy(str(strategy_file)) if strategy_file.is_file() else {}
    return load_state(folder), strategy_state, progress
