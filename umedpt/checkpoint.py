"""The one checkpoint format: a folder, one safetensors file per parameter group.

Every folder of weights this project writes uses it: ``pretrain``'s checkpoint, a site's
saved rounds, the coordinator's state after each round and a federation's final
``global/`` folder. Layout::

    checkpoint.json                  format, version, model config, tasks of the heads, groups
    encoder.safetensors              keys "encoder.*"
    blocks.<block>.safetensors       keys "blocks.<block>.*"
    heads.<task>.safetensors         keys "heads.<task>.*"
    trainer.pt                       optional optimizer/schedule/data-order state

Because the model configuration is stored beside the weights, :func:`load_model` rebuilds
the encoder and whichever blocks and heads a folder holds from the folder alone. Any group
also loads on its own (:func:`load_group`), e.g. the encoder into a model with new heads.
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

from umedpt import contract
from umedpt.config import TaskConfig
from umedpt.model import UMedPTModel
from umedpt.models.presets import ModelConfig

META_FILE = "checkpoint.json"
TRAINER_FILE = "trainer.pt"
FORMAT = "umedpt-fl checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A folder is not a checkpoint, or does not fit the model it is loaded into."""


def save_weights(
    folder: str | Path,
    state: Mapping[str, torch.Tensor],
    config: ModelConfig,
    *,
    tasks: Iterable[TaskConfig] = (),
    meta: Mapping[str, Any] | None = None,
    trainer_state: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write ``state`` (any groups) with its model config, atomically; returns the folder.

    ``tasks`` describes the heads in ``state`` (type and classes), so they can be rebuilt;
    ``meta`` is free-form provenance (kind of run, step, round, metrics).
    ``extra_files`` are written into the same folder (e.g. a server's strategy state), so
    they are replaced together with the weights.
    """
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    groups = _write_groups(state, tmp)
    heads = {contract.group_of(k) for k in state if not contract.is_shared(k)}
    described = {
        t.name: {"type": t.type, "classes": list(t.classes), "image_size": t.image_size}
        for t in tasks
        if f"{contract.HEADS}.{t.name}" in heads
    }
    undescribed = sorted(h for h in heads if h.split(".", 1)[1] not in described)
    if undescribed:
        raise CheckpointError(f"{folder}: heads {undescribed} are saved without their task")
    header = {
        "format": FORMAT,
        "version": VERSION,
        "model": config.to_dict(),
        "tasks": described,
        "groups": groups,
        "meta": dict(meta or {}),
    }
    (tmp / META_FILE).write_text(json.dumps(header, indent=2, default=str))
    if trainer_state is not None:
        torch.save(dict(trainer_state), tmp / TRAINER_FILE)
    for name, payload in (extra_files or {}).items():
        (tmp / name).write_bytes(payload)
    replace_folder(tmp, folder)
    return folder


def save_checkpoint(
    folder: str | Path,
    model: UMedPTModel,
    *,
    meta: Mapping[str, Any] | None = None,
    trainer_state: Mapping[str, Any] | None = None,
    groups: Iterable[str] | None = None,
) -> Path:
    """Save ``model``'s weights (optionally only some groups) with its config and tasks."""
    state = model.state_dict()
    if groups is not None:
        state = contract.select(state, groups)
    return save_weights(
        folder, state, model.config, tasks=model.tasks, meta=meta, trainer_state=trainer_state
    )


def _write_groups(state: Mapping[str, torch.Tensor], folder: Path) -> list[str]:
    by_group: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for name, tensor in state.items():
        by_group[contract.group_of(name)][name] = tensor.detach().cpu().contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    for group, tensors in by_group.items():
        save_file(tensors, str(folder / f"{group}.safetensors"))
    return sorted(by_group)


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


def committed_folder(folder: str | Path) -> Path | None:
    """The checkpoint ``folder`` stands for, or None when there is none.

    ``replace_folder`` moves the old copy aside before it moves the new one in; a crash
    between the two leaves only ``<folder>.old``, which is then the last good copy.
    """
    folder = Path(folder)
    if folder.is_dir():
        return folder
    previous = folder.with_name(folder.name + ".old")
    return previous if previous.is_dir() else None


def read_header(folder: str | Path) -> dict[str, Any]:
    """The checkpoint's ``checkpoint.json``; a clear error when the folder is not one."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a umedpt-fl checkpoint (no {META_FILE})")
    try:
        header = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable: {exc}") from exc
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: format {header.get('format')!r} version {header.get('version')!r}; "
            f"this version of umedpt-fl reads {FORMAT!r} version {VERSION}"
        )
    return header


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The free-form provenance stored with a checkpoint."""
    return dict(read_header(folder)["meta"])


def read_model_config(folder: str | Path) -> ModelConfig:
    return ModelConfig.from_dict(read_header(folder)["model"])


def load_group(folder: str | Path, group: str) -> dict[str, torch.Tensor]:
    """Load one group (``encoder``, ``blocks.<b>`` or ``heads.<t>``) of a checkpoint."""
    path = Path(folder) / f"{group}.safetensors"
    if not path.is_file():
        available = sorted(
            p.name.removesuffix(".safetensors") for p in Path(folder).glob("*.safetensors")
        )
        raise CheckpointError(f"{path}: no group '{group}' in this checkpoint; it has {available}")
    return load_file(str(path))


def load_state(folder: str | Path, groups: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of ``groups`` (default: every group the checkpoint lists)."""
    wanted = read_header(folder)["groups"] if groups is None else list(groups)
    state: dict[str, torch.Tensor] = {}
    for group in wanted:
        state.update(load_group(folder, group))
    return state


def load_weights(
    model: torch.nn.Module, folder: str | Path, *, groups: Iterable[str] | None = None
) -> list[str]:
    """Load the given groups (default: every group the model has) into ``model``.

    Every tensor of the chosen groups must match the model's names, shapes and dtypes.
    Returns the groups loaded.
    """
    model_groups = sorted({contract.group_of(n) for n in model.state_dict()})
    wanted = list(groups) if groups is not None else model_groups
    state = load_state(folder, wanted)
    expected = contract.select(model.state_dict(), wanted)
    if problem := contract.state_mismatch(state, expected):
        raise CheckpointError(
            f"{folder}: the checkpoint does not fit the model ({problem}); "
            "another preset, encoder or class list?"
        )
    model.load_state_dict(state, strict=False)
    return wanted


def load_model(folder: str | Path, *, map_location: str = "cpu") -> UMedPTModel:
    """Rebuild the model a checkpoint folder holds: encoder, its blocks and its heads.

    Needs nothing but the folder: the model config and the heads' tasks are stored in
    ``checkpoint.json``. Blocks without a head (a federation's ``global/``) are rebuilt too.
    """
    header = read_header(folder)
    config = ModelConfig.from_dict(header["model"])
    tasks = [
        TaskConfig(
            name=name,
            type=spec["type"],
            format="",
            path=Path(folder),
            classes=tuple(spec["classes"]),
            image_size=int(spec.get("image_size", 64)),
        )
        for name, spec in header["tasks"].items()
    ]
    blocks = [b for g in header["groups"] if (b := contract.block_of(g)) is not None]
    model = UMedPTModel(config, tasks, extra_blocks=blocks)
    if contract.ENCODER not in header["groups"]:
        raise CheckpointError(f"{folder}: holds no encoder (groups {header['groups']})")
    load_weights(model, folder, groups=header["groups"])
    return model.to(map_location)


def load_trainer_state(folder: str | Path) -> dict[str, Any] | None:
    """The folder's ``trainer.pt``, or None. Memory-mapped (copy on write): a site restores
    its optimizer state (as large as the encoder) every round, and reading it into fresh
    buffers first was a main cost of a round outside training (``bench/site_overhead.py``)."""
    path = Path(folder) / TRAINER_FILE
    return torch.load(path, weights_only=True, mmap=True) if path.is_file() else None
