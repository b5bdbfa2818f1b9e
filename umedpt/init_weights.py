"""Weights a model starts from instead of its seeded init: ``--init SPEC`` and timm's weights.

SPEC is a folder this project wrote (a federation's ``global/``, ``pretrain``'s
``checkpoint/``, an ``export``ed timm folder) or ``timm:<name>`` (timm's pretrained weights of
``<name>``, read by timm's own loader from this machine's caches: nothing is downloaded at run
time). What is loaded: the encoder always, and each shared block that both the source and the
model have (a folder of this project may hold blocks; timm's weights never do). A source that
does not fit the model is refused before anything trains, naming the tensors that differ.

``umedpt-fl evaluate`` finds timm's local weights through the same functions
(:func:`local_weights_file`, :func:`timm_pretrained_features`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError

from umedpt import checkpoint, contract
from umedpt.errors import UmedptError
from umedpt.model import UMedPTModel
from umedpt.models.presets import ModelConfig

TIMM_PREFIX = "timm:"
ENCODER_MODEL = f"{contract.ENCODER}.model."  # Encoder wraps timm's features_only model
SHOWN = 5  # differing tensors named in a mismatch error


class InitError(UmedptError, ValueError):
    """A warm-start source that is missing, unreadable or does not fit the model."""


class SourceKind:
    """Where the weights come from (recorded, never the path)."""

    CHECKPOINT = "checkpoint"  # a folder in the project's checkpoint format
    TIMM_FOLDER = "timm-folder"  # config.json + model.safetensors (an export), loaded by timm
    TIMM = "timm"  # timm's pretrained weights of a model name


@dataclass(frozen=True)
class InitSource:
    """The weights of one ``--init`` value, read and not yet loaded into a model."""

    spec: str  # as given: a path is private, never recorded
    kind: str  # a SourceKind
    architecture: str  # the source's timm model name (a timm name, or the folder's)
    state: Mapping[str, torch.Tensor]  # "encoder.*" and "blocks.<b>.*" tensors

    @property
    def groups(self) -> list[str]:
        return sorted({contract.group_of(k) for k in self.state})


@dataclass(frozen=True)
class WarmStart:
    """What a model was initialised from, without the path: for run configs and cards."""

    kind: str
    architecture: str
    groups: tuple[str, ...]  # the groups loaded
    digest: str  # sha256 of the tensors loaded, first 12 hex digits

    def describe(self) -> str:
        """``timm:resnet50 (encoder; sha256 1a2b3c4d5e6f)``, ``checkpoint (encoder,
        blocks.classification; sha256 ...)``: identifies the weights, not where they lay."""
        label = (
            f"{SourceKind.TIMM}:{self.architecture}" if self.kind == SourceKind.TIMM else self.kind
        )
        return f"{label} ({', '.join(self.groups)}; sha256 {self.digest})"


def read_init(spec: str, config: ModelConfig) -> InitSource:
    """The weights ``spec`` names, for a model of architecture ``config``.

    ``config`` matters to timm's weights only: timm builds ``<name>`` with the run's model
    arguments when the run uses that encoder, and adapts the weights as it does for any
    model (a folder's tensors are compared as they are).
    """
    spec = spec.strip()
    if spec.startswith(TIMM_PREFIX):
        name = spec.removeprefix(TIMM_PREFIX)
        if not name:
            raise InitError(f"--init {spec!r}: say which timm model: timm:<name>")
        kwargs = config.encoder_kwargs if name == config.encoder else {}
        model = timm_pretrained_features(name, kwargs, what=f"--init {spec}")
        state = _prefixed(model.state_dict())
        return InitSource(spec, SourceKind.TIMM, name, state)
    folder = Path(spec).expanduser()
    if not folder.exists():
        raise InitError(f"--init {spec}: no such folder")
    if not folder.is_dir():
        raise InitError(
            f"--init {spec}: not a folder; give a checkpoint folder (global/, checkpoint/), "
            "an exported timm folder or timm:<name>"
        )
    if (folder / checkpoint.META_FILE).is_file():
        return _read_checkpoint(spec, folder)
    if (folder / "config.json").is_file():
        return _read_timm_folder(spec, folder)
    raise InitError(
        f"--init {spec}: neither a umedpt-fl checkpoint (no {checkpoint.META_FILE}) nor a timm "
        "folder (no config.json)"
    )


def apply_init(model: UMedPTModel, source: InitSource) -> WarmStart:
    """Load the source's encoder, and each block both have, into ``model``.

    Every tensor of a loaded group must match the model's name and shape; otherwise
    nothing is loaded and the error names the first tensors that differ and their count.
    """
    target = model.state_dict()
    model_groups = {contract.group_of(k) for k in target}
    if contract.ENCODER not in source.groups:
        raise InitError(f"--init {source.spec}: holds no encoder (groups {source.groups})")
    # the encoder first: the mismatch a wrong preset or encoder shows
    groups = sorted((g for g in source.groups if g in model_groups), key=lambda g: g != "encoder")
    got = contract.select(source.state, groups)
    want = contract.select(target, groups)
    if differences := tensor_differences(got, want):
        more = f"; ... ({len(differences) - SHOWN} more)" if len(differences) > SHOWN else ""
        raise InitError(
            f"--init {source.spec} ({source.architecture}) does not fit this run's model "
            f"({model.config.encoder}): {len(differences)} tensors of {', '.join(groups)} "
            f"differ: {'; '.join(differences[:SHOWN])}{more}. Give the run the source's "
            "--preset/--encoder, or another --init"
        )
    loaded = contract.select(source.state, groups)
    model.load_state_dict(loaded, strict=False)
    return WarmStart(source.kind, source.architecture, tuple(groups), weights_digest(loaded))


def tensor_differences(
    got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor]
) -> list[str]:
    """Each tensor name that is missing, unexpected or of another shape, in ``want``'s order."""
    found = []
    for key, value in want.items():
        if key not in got:
            found.append(f"missing '{key}'")
        elif tuple(got[key].shape) != tuple(value.shape):
            found.append(f"'{key}' {tuple(got[key].shape)} vs {tuple(value.shape)}")
    found += [f"unexpected '{key}'" for key in got if key not in want]
    return found


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of names, dtypes, shapes and bytes, in name order: the same weights give the
    same digest whichever folder or format they were read from."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]


def _prefixed(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {ENCODER_MODEL + k: v for k, v in state.items()}


def _read_checkpoint(spec: str, folder: Path) -> InitSource:
    try:
        header = checkpoint.read_header(folder)
        shared = [g for g in header["groups"] if not g.startswith(f"{contract.HEADS}.")]
        if contract.ENCODER not in shared:
            raise InitError(
                f"--init {spec}: holds no encoder (groups {header['groups']}); a site's saved "
                "rounds keep only its heads and blocks: give the federation's global/ folder"
            )
        state = checkpoint.load_state(folder, shared)
        architecture = str(header["model"]["encoder"])
    except (checkpoint.CheckpointError, SafetensorError, OSError, KeyError, TypeError) as exc:
        raise InitError(f"--init {spec}: unreadable: {exc}") from exc
    return InitSource(spec, SourceKind.CHECKPOINT, architecture, state)


def _read_timm_folder(spec: str, folder: Path) -> InitSource:
    """The encoder through timm's ``local-dir:`` loader; an export's ``umedpt-blocks/``
    (the same encoder with the shared blocks, in the project's format) adds the blocks."""
    from umedpt.export.exporter import BLOCKS_DIR
    from umedpt.export.timm_folder import load_features

    try:
        architecture = str(json.loads((folder / "config.json").read_text())["architecture"])
        state = _prefixed(load_features(folder).state_dict())
    except Exception as exc:  # timm's own loader: any failure means "not loadable"
        raise InitError(
            f"--init {spec}: timm cannot load this folder ({type(exc).__name__}: {str(exc)[:300]})"
        ) from exc
    blocks = folder / BLOCKS_DIR
    if (blocks / checkpoint.META_FILE).is_file():
        extra = _read_checkpoint(f"{spec}/{BLOCKS_DIR}", blocks).state
        state.update({k: v for k, v in extra.items() if contract.block_of(contract.group_of(k))})
    return InitSource(spec, SourceKind.TIMM_FOLDER, architecture, state)


def timm_pretrained_features(
    name: str, kwargs: Mapping[str, object], *, what: str
) -> torch.nn.Module:
    """timm's ``features_only`` model of ``name`` with its pretrained weights, read by timm's
    own loader from a file already on this machine (never the network)."""
    import timm

    weights = local_weights_file(name, what=what)
    try:
        return timm.create_model(
            name,
            pretrained=True,
            features_only=True,
            pretrained_cfg_overlay={"file": str(weights)},
            **dict(kwargs),
        )
    except (RuntimeError, ValueError, OSError, SafetensorError) as exc:
        raise InitError(f"{what}: {weights} does not load: {str(exc)[:600]}") from exc


def local_weights_file(name: str, *, what: str) -> Path:
    """Where timm's default pretrained weights of ``name`` lie in this machine's caches.

    Looked up by hand (the Hugging Face cache, then torch hub's) because timm's own loader
    would reach for the network when the file is missing (about a minute of retries on a
    machine without it), or check it for updates.
    """
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        raise InitError(f"{what}: timm has no pretrained weights for '{name}'")
    if cfg.file and Path(cfg.file).is_file():
        return Path(cfg.file)
    if cfg.hf_hub_id:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return Path(found)
    if cfg.url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if cached.is_file():
            return cached
    raise InitError(
        f"{what}: timm has no local pretrained weights for it on this machine (looked for "
        f"{cfg.hf_hub_id or cfg.url} in the Hugging Face and torch hub caches); nothing is "
        "downloaded at run time: fetch them once where the hub is reachable (python -c "
        f"\"import timm; timm.create_model('{name}', pretrained=True)\") and copy the cache "
        "here"
    )
