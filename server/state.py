"""The server's checkpoint after every round: shared weights, strategy state, history.

Written atomically (temporary folder, then rename), so a run killed at any moment can
``--resume`` from its last completed round.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

from umedpt.training.checkpoint import replace_folder

WEIGHTS = "shared.safetensors"
STRATEGY = "strategy.safetensors"
PROGRESS = "progress.json"


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
    strategy_state: dict[str, np.ndarray],
    progress: ServerProgress,
) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS))
    save_numpy({k: np.ascontiguousarray(v) for k, v in strategy_state.items()}, str(tmp / STRATEGY))
    (tmp / PROGRESS).write_text(json.dumps(asdict(progress), indent=1, default=str))
    replace_folder(tmp, folder)


def load_server_state(
    folder: Path,
) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray], ServerProgress]:
    if not (folder / PROGRESS).is_file():
        raise FileNotFoundError(f"{folder}: no server checkpoint to resume from")
    progress = ServerProgress(**json.loads((folder / PROGRESS).read_text()))
    strategy_file = folder / STRATEGY
    strategy_state = load_numpy(str(strategy_file)) if strategy_file.is_file() else {}
    return load_file(str(folder / WEIGHTS)), strategy_state, progress
