"""Which encoders an evaluation compares, and how each one is built.

``--encoder`` takes ``[LABEL=]SPEC`` where SPEC is a checkpoint folder the project writes
(a federated run's ``global/``, ``pretrain``'s ``checkpoint/``, a site's saved round),
``random`` (the architecture of the other encoders, freshly initialised) or
``imagenet:<timm name>`` (timm's pretrained weights, only when they are already on this
machine: nothing is downloaded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

import torch

from umedpt import checkpoint, contract, init_weights
from umedpt.errors import UmedptError
from umedpt.init_weights import InitError, timm_pretrained_features
from umedpt.models.encoder import Encoder
from umedpt.models.presets import ModelConfig, model_config

RANDOM = "random"
IMAGENET_PREFIX = "imagenet:"


class EncoderSpecError(UmedptError, ValueError):
    """An ``--encoder`` value that names nothing this command can build."""


@dataclass(frozen=True)
class EncoderSpec:
    """One encoder under evaluation: a label for tables, where it comes from, its architecture."""

    label: str
    source: str  # "random", "imagenet:<name>" or a checkpoint folder
    config: ModelConfig | None  # None only while parsing a bare "random"
    random_init_seed: int = 0

    @property
    def kind(self) -> str:
        if self.source == RANDOM:
            return RANDOM
        return "imagenet" if self.source.startswith(IMAGENET_PREFIX) else "checkpoint"

    def describe(self) -> dict[str, object]:
        return {"source": self.source, "kind": self.kind, "model": self.config.to_dict()}

    def build(self, device: str | torch.device = "cpu") -> Encoder:
        """The encoder with its weights (a fresh, seeded init for ``random``)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_init_seed)
            encoder = Encoder(self.config)
        if self.kind == "checkpoint":
            state = checkpoint.load_group(self.source, contract.ENCODER)
            prefix = f"{contract.ENCODER}."
            encoder.load_state_dict({k.removeprefix(prefix): v for k, v in state.items()})
        elif self.kind == "imagenet":
            encoder.model.load_state_dict(_local_timm_weights(self.config).state_dict())
        return encoder.to(device)


def parse_encoders(values: Sequence[str], *, preset: str = "tiny") -> list[EncoderSpec]:
    """Specs for ``values`` plus a random baseline for every architecture among them.

    A random baseline of the same architecture is always part of the comparison: it is
    the reference that "labels saved" is measured against.
    """
    parsed = [_parse_one(value, preset) for value in values]
    architectures: list[ModelConfig] = []
    for config in (s.config for s in parsed if s.config is not None):
        if config not in architectures:
            architectures.append(config)
    if not architectures:
        architectures = [model_config(preset)]
    # A bare "random" takes the first architecture among the other encoders.
    specs = [s if s.config is not None else replace(s, config=architectures[0]) for s in parsed]
    for config in architectures:
        if not any(s.kind == RANDOM and s.config == config for s in specs):
            label = RANDOM if len(architectures) == 1 else f"{RANDOM}:{config.encoder}"
            specs.append(EncoderSpec(label, RANDOM, config))
    labels = [s.label for s in specs]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise EncoderSpecError(
            f"--encoder labels must be unique, {duplicates} repeat; name them: "
            "--encoder federated=runs/a/global --encoder alone=runs/b/checkpoint"
        )
    return specs


def _parse_one(value: str, preset: str) -> EncoderSpec:
    label, _, source = value.rpartition("=") if "=" in value else ("", "", value)
    source = source.strip()
    if source == RANDOM:
        return EncoderSpec(label or RANDOM, RANDOM, None)
    if source.startswith(IMAGENET_PREFIX):
        name = source.removeprefix(IMAGENET_PREFIX)
        if not name:
            raise EncoderSpecError(f"--encoder {value!r}: say which timm model: imagenet:<name>")
        local_weights_file(name)  # missing weights fail now, before any cell trains
        # timm's own architecture for its weights (not the preset's kwargs, even when the
        # preset uses the same model name with other widths).
        config = replace(model_config(preset), encoder=name, encoder_kwargs=MappingProxyType({}))
        return EncoderSpec(label or source, source, config)
    folder = Path(source).expanduser()
    try:
        config = checkpoint.read_model_config(folder)
        groups = checkpoint.read_header(folder)["groups"]
    except checkpoint.CheckpointError as exc:
        raise EncoderSpecError(f"--encoder {value!r}: {exc}") from exc
    if contract.ENCODER not in groups:
        raise EncoderSpecError(f"--encoder {value!r}: {folder} holds no encoder ({groups})")
    return EncoderSpec(label or _folder_label(folder), str(folder.resolve()), config)


def _folder_label(folder: Path) -> str:
    """A short label: the folder's name, with its parent's when the name says nothing."""
    resolved = folder.resolve()
    if resolved.name in {"global", "checkpoint", "latest", "weights"}:
        return f"{resolved.parent.name}/{resolved.name}"
    return resolved.name


def _local_timm_weights(config: ModelConfig) -> torch.nn.Module:
    """timm's pretrained model, from a file already on this machine (never the network)."""
    try:
        return timm_pretrained_features(
            config.encoder, config.encoder_kwargs, what=f"--encoder imagenet:{config.encoder}"
        )
    except InitError as exc:
        raise EncoderSpecError(str(exc)) from exc


def local_weights_file(name: str) -> Path:
    """Where timm's default pretrained weights of ``name`` lie in this machine's caches
    (:func:`umedpt.init_weights.local_weights_file`)."""
    try:
        return init_weights.local_weights_file(name, what=f"--encoder imagenet:{name}")
    except InitError as exc:
        raise EncoderSpecError(str(exc)) from exc
