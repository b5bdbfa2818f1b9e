"""What a model must satisfy before it can be trained under DP-SGD."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from umedpt.privacy.errors import PrivacyError


def check_private_modules(modules: Iterable[tuple[str, nn.Module]]) -> None:
    """Refuse BatchNorm in anything trained privately.

    BatchNorm normalises each sample with statistics of the whole batch, so one sample's
    gradient depends on every other sample and per-sample clipping no longer bounds its
    contribution. We fail rather than swap in GroupNorm silently: a swapped encoder would
    no longer match the weights the other sites and the server hold.
    """
    for prefix, module in modules:
        for name, sub in module.named_modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm | nn.SyncBatchNorm):
                where = f"{prefix}.{name}" if name else prefix
                raise PrivacyError(
                    f"module '{where}' is a {type(sub).__name__}: DP-SGD cannot train through "
                    "BatchNorm (it mixes samples of a batch); use an encoder and blocks with "
                    "GroupNorm/LayerNorm (e.g. the presets' Swin encoders) or turn off [privacy]"
                )
