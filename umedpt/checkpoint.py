"""Checkpoints as one safetensors file per parameter group, so any group loads alone.

Layout of a checkpoint folder::

    encoder.safetensors              keys "encoder.*"
    blocks.<block>.safetensors       keys "blocks.<block>.*"
    heads.<task>.safetensors         keys "heads.<task>.*"
    checkpoint.json                  model config, tasks, step, metrics
    trainer.pt                       optional optimizer/schedule/data-order state

Folders are written under a temporary name and renamed into place, so a crash while
saving never leaves a half-written checkpoint where a good one was.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from umedpt import contract

META_FILE = "checkpoint.json"
TRAINER_FILE = "trainer.pt"


def save_state_groups(state: Mapping[str, torch.Tensor], folder: Path) -> list[str]:
    """Write ``state`` into ``folder``, one safetensors file per group; returns the groups."""
    by_group: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for name, tensor in state.items():
        by_group[contract.group_of(name)][name] = tensor.detach().cpu().contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    for group, tensors in by_group.items():
        save_file(tensors, str(folder / f"{group}.safetensors"))
    return sorted(by_group)


def save_checkpoint(
    folder: str | Path,
    model: nn.Module,
    *,
    meta: Mapping[str, Any],
    trainer_state: Mapping[str, Any] | None = None,
    groups: Iterable[str] | None = None,
) -> Path:
    """Save ``model``'s weights (optionally only some groups) plus metadata, atomically."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    state = model.state_dict()
    if groups is not None:
        state = contract.select(state, groups)
    written = save_state_groups(state, tmp)
    (tmp / META_FILE).write_text(json.dumps({**meta, "groups": written}, indent=2, default=str))
    if trainer_state is not None:
        torch.save(dict(trainer_state), tmp / TRAINER_FILE)
    replace_folder(tmp, folder)
    return folder


def replace_folder(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``, replacing it; the old copy survives until the swap."""
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    if old.exists():
        shutil.rmtree(old)


def read_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a umedpt checkpoint (no {META_FILE})")
    return json.loads(path.read_text())


def load_group(folder: str | Path, group: str) -> dict[str, torch.Tensor]:
    """Load one group (``encoder``, ``blocks.<b>`` or ``heads.<t>``) of a checkpoint."""
    path = Path(folder) / f"{group}.safetensors"
    if not path.is_file():
        available = sorted(
            p.name.removesuffix(".safetensors") for p in Path(folder).glob("*.safetensors")
        )
        raise FileNotFoundError(
            f"{path}: no group '{group}' in this checkpoint; it has {available}"
        )
    return load_file(str(path))


def load_weights(
    model: nn.Module, folder: str | Path, *, groups: Iterable[str] | None = None
) -> list[str]:
    """Load the given groups (default: every group the model has) into ``model``.

    Every tensor of the chosen groups must match the model's names and shapes.
    Returns the groups loaded.
    """
    model_groups = sorted({contract.group_of(n) for n in model.state_dict()})
    wanted = list(groups) if groups is not None else model_groups
    state: dict[str, torch.Tensor] = {}
    for group in wanted:
        state.update(load_group(folder, group))
    expected = contract.select(model.state_dict(), wanted)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{folder}: checkpoint does not fit the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"{folder}: '{name}' has shape {tuple(tensor.shape)} in the checkpoint but "
                f"{tuple(expected[name].shape)} in the model (another preset or class list?)"
            )
    model.load_state_dict(state, strict=False)
    return wanted


def load_trainer_state(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / TRAINER_FILE
    return torch.load(path, weights_only=True) if path.is_file() else None
