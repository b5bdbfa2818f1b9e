"""Which torch device to run on: one rule for every command and the federated client."""

from __future__ import annotations

from enum import StrEnum

import torch

from umedpt.errors import ConfigError


class Device(StrEnum):
    """The choices of ``--device``."""

    AUTO = "auto"  # the first GPU when there is one, else the CPU
    CPU = "cpu"
    CUDA = "cuda"


def resolve_device(device: str | Device = Device.AUTO) -> str:
    """A concrete torch device string; asking for CUDA where there is none is an error."""
    name = str(device)
    if name == Device.AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device", "device", f"{name}: CUDA is not available on this machine")
    if name != Device.CPU and not name.startswith("cuda"):
        raise ConfigError("--device", "device", f"must be auto, cpu or cuda, got {name!r}")
    return name
