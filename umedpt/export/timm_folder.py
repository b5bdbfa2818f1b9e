"""The encoder as a folder in timm's own format, loadable with ``local-dir:`` by anyone.

The project trains timm's ``features_only`` wrapper of a model (:class:`Encoder`); timm
loads a folder into the *base* model (``num_classes=0``) and wraps it afterwards, strictly.
So the wrapper's weights are renamed onto the base model's keys (``features_only`` flattens
``layers.0`` to ``layers_0`` for Swin; a ResNet keeps its names), and the keys the wrapper
does not have (Swin's final ``norm``, applied only by ``forward_features``/``forward_head``)
are filled from the base model's fresh initialisation: that makes a strict load work and
leaves every feature map unchanged. timm's own ``save_for_hf`` writes the folder
(``config.json`` + ``model.safetensors``); the result is loaded back through ``local-dir:``
and compared, map by map, with the project's encoder before it is accepted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models._hub import save_for_hf

from umedpt import contract
from umedpt.checkpoint import CheckpointError
from umedpt.models.encoder import Encoder
from umedpt.models.presets import ModelConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ENCODER_PREFIX = f"{contract.ENCODER}.model."  # Encoder wraps the timm model as ``.model``
# pretrained_cfg fields that describe timm's ImageNet weights, not these ones.
_SOURCE_FIELDS = ("tag", "license", "origin_url", "paper_ids", "hf_hub_id", "url", "pool_size")
# The project resizes every image to a square (bilinear, no crop) and normalises it with
# timm's ImageNet mean/std whatever the architecture (umedpt.tasks.base.normalize_images);
# say so in config.json.
_PREPROCESSING = {
    "interpolation": "bilinear",
    "crop_pct": 1.0,
    "crop_mode": "center",
    "mean": IMAGENET_DEFAULT_MEAN,
    "std": IMAGENET_DEFAULT_STD,
}


class ExportMismatchError(RuntimeError):
    """The exported folder does not reproduce the project's feature maps (a bug, not bad input)."""


@dataclass(frozen=True)
class TimmExport:
    """What was written, for the model card."""

    folder: Path
    architecture: str
    model_args: dict[str, Any]
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    feature_channels: list[int]
    feature_strides: list[int]
    filled_keys: list[str]  # base-model keys absent from the trained encoder (fresh init)
    parameters: int
    output_fmt: str  # of timm's features_only maps: "NHWC" for Swin, "NCHW" for CNNs


def encoder_from_state(config: ModelConfig, state: Mapping[str, torch.Tensor]) -> Encoder:
    """The project's encoder with the checkpoint's ``encoder.*`` weights, in eval mode."""
    encoder = Encoder(config)
    expected = {f"{contract.ENCODER}.{k}": v for k, v in encoder.state_dict().items()}
    if problem := contract.state_mismatch(state, expected):
        raise CheckpointError(
            f"the checkpoint's encoder does not fit its own model config ({problem})"
        )
    encoder.load_state_dict({k.removeprefix(f"{contract.ENCODER}."): v for k, v in state.items()})
    return encoder.eval()


def base_model(config: ModelConfig) -> torch.nn.Module:
    """timm's full model of the encoder's architecture, without a classifier."""
    return timm.create_model(
        config.encoder, pretrained=False, num_classes=0, **dict(config.encoder_kwargs)
    )


def _plain(key: str) -> str:
    # features_only wrappers join a flattened module path with '_' (``layers.0`` ->
    # ``layers_0``); comparing names with every '_' read as '.' matches the two spellings.
    return key.replace("_", ".")


def base_state_dict(
    encoder: Encoder, base: torch.nn.Module
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The encoder's weights under the base model's keys, and the keys filled from ``base``."""
    target = base.state_dict()
    by_plain: dict[str, str] = {}
    for key in target:
        if _plain(key) in by_plain:
            raise ExportMismatchError(
                f"{type(base).__name__}: parameters '{by_plain[_plain(key)]}' and '{key}' differ "
                "only by '_' vs '.'; the feature wrapper's names cannot be mapped back"
            )
        by_plain[_plain(key)] = key
    state = dict(target)
    unmatched = []
    for key, value in encoder.model.state_dict().items():
        name = by_plain.get(_plain(key))
        if name is None or target[name].shape != value.shape:
            unmatched.append(key)
            continue
        state[name] = value
        del by_plain[_plain(key)]
    if unmatched:
        raise ExportMismatchError(
            f"the base model of {encoder.model.__class__.__name__} has no place for {unmatched[:5]}"
            f"{' ...' if len(unmatched) > 5 else ''}; this encoder cannot be exported as a timm "
            "folder"
        )
    return state, sorted(by_plain.values())


def resolve_input_size(config: ModelConfig, image_sizes: Sequence[int]) -> int | None:
    """The image side the encoder was trained at: the tasks' (images are resized to it),
    else the preset's ``img_size`` (a federation's ``global/`` records no tasks)."""
    if image_sizes:
        return max(image_sizes)
    size = config.encoder_kwargs.get("img_size")
    if isinstance(size, int):
        return size
    if isinstance(size, list | tuple) and size:
        return int(size[0])
    return None


def write_timm_folder(
    folder: Path,
    config: ModelConfig,
    encoder_state: Mapping[str, torch.Tensor],
    *,
    image_size: int | None,
) -> TimmExport:
    """Write ``config.json`` + ``model.safetensors`` for ``local-dir:``; verified on return."""
    encoder = encoder_from_state(config, encoder_state)
    base = base_model(config)
    state, filled = base_state_dict(encoder, base)
    base.load_state_dict(state, strict=True)
    cfg = {k: v for k, v in base.pretrained_cfg.items() if k not in _SOURCE_FIELDS}
    cfg.update(_PREPROCESSING)
    if image_size is not None:
        cfg["input_size"] = (3, image_size, image_size)
    # save_for_hf writes the model's own pretrained_cfg: this one describes these weights.
    base.pretrained_cfg = cfg
    model_args = {
        k: list(v) if isinstance(v, tuple) else v for k, v in config.encoder_kwargs.items()
    }
    save_for_hf(base, str(folder), model_args=model_args or None, safe_serialization=True)
    output_fmt = verify_timm_folder(folder, encoder, cfg["input_size"])
    return TimmExport(
        folder=folder,
        architecture=config.encoder,
        model_args=model_args,
        input_size=tuple(int(x) for x in cfg["input_size"]),  # type: ignore[arg-type]
        mean=tuple(float(x) for x in cfg["mean"]),
        std=tuple(float(x) for x in cfg["std"]),
        feature_channels=list(encoder.out_channels),
        feature_strides=list(encoder.strides),
        filled_keys=filled,
        parameters=sum(p.numel() for p in base.parameters()),
        output_fmt=output_fmt,
    )


def load_features(folder: Path) -> torch.nn.Module:
    """The folder as a user loads it: ``features_only`` through ``local-dir:``."""
    return timm.create_model(f"local-dir:{folder}", pretrained=True, features_only=True).eval()


def output_format(model: torch.nn.Module) -> str:
    """``NHWC`` or ``NCHW``: how a timm ``features_only`` model lays out its maps."""
    return "NHWC" if str(getattr(model, "output_fmt", "NCHW")).endswith("NHWC") else "NCHW"


def nchw_features(model: torch.nn.Module, images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """The last ``levels`` feature maps of a timm ``features_only`` model, as NCHW."""
    maps = list(model(images))[-levels:]
    if output_format(model) == "NHWC":
        maps = [m.permute(0, 3, 1, 2) for m in maps]  # NHWC -> NCHW
    return maps


def verify_timm_folder(folder: Path, encoder: Encoder, input_size: Sequence[int]) -> str:
    """Load ``folder`` strictly through ``local-dir:``, compare every feature map; returns
    the loaded model's output format."""
    try:
        loaded = load_features(folder)
    except Exception as exc:  # timm's own loader: any failure means "not loadable"
        raise ExportMismatchError(
            f"{folder}: timm {timm.__version__} cannot load the exported encoder through "
            f"'local-dir:' ({type(exc).__name__}: {str(exc)[:300]}); umedpt-fl needs timm >= 1.0.31"
        ) from exc
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, *input_size, generator=generator)  # (B, 3, H, W)
    with torch.no_grad():
        expected = encoder(images)
        got = nchw_features(loaded, images, len(expected))
    for level, (a, b) in enumerate(zip(expected, got, strict=True)):
        if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
            raise ExportMismatchError(
                f"{folder}: feature map {level} of the exported encoder differs from the "
                f"project's (shapes {tuple(a.shape)} vs {tuple(b.shape)}); nothing was published"
            )
    return output_format(loaded)
