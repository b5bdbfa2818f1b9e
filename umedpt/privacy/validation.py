"""What a model must satisfy before it can be trained under DP-SGD.

Opacus' :class:`~opacus.validators.ModuleValidator` knows which layers DP-SGD cannot train
as configured; its registered validators are asked about every module here, with three
differences, each for a reason:

- BatchNorm is refused by our own check, which Opacus' does not replace: Opacus matches
  exact types among modules with trainable parameters, so it misses BatchNorm subclasses
  (timm's ``BatchNormAct2d``) and BatchNorm without affine or with frozen parameters,
  which in training mode mix a batch's samples all the same.
- LSTM, GRU and MultiheadAttention are not refused: Opacus flags them because its own
  per-sample gradient hooks need its replacements (``DPLSTM``, ...), but our per-sample
  gradients come from ``torch.func`` (:mod:`umedpt.privacy.per_sample`), which handles
  them as they are.
- Nothing is fixed (``ModuleValidator.fix`` swaps BatchNorm for GroupNorm): a swapped
  module no longer matches the weights the other sites and the server hold, so we refuse
  and say which module. Nor is training mode checked: the trainer sets it every step.
"""

from __future__ import annotations

from collections.abc import Iterable

from opacus.validators import ModuleValidator
from torch import nn

from umedpt.privacy.errors import PrivacyError

# Refused by Opacus only for its own grad-sample hooks (see the module docstring).
TORCH_FUNC_HANDLES = (nn.LSTM, nn.GRU, nn.MultiheadAttention)


def check_private_modules(modules: Iterable[tuple[str, nn.Module]]) -> None:
    """Refuse any module of ``modules`` (name, module) that DP-SGD cannot train, by name.

    BatchNorm normalises each sample with statistics of the whole batch, so one sample's
    gradient depends on every other sample and per-sample clipping no longer bounds its
    contribution. Opacus' validators add what else it knows (InstanceNorm that tracks
    running statistics).
    """
    for prefix, module in modules:
        for name, sub in module.named_modules():
            where = f"{prefix}.{name}" if name else prefix
            if isinstance(sub, nn.modules.batchnorm._BatchNorm | nn.SyncBatchNorm):
                raise PrivacyError(
                    f"module '{where}' is a {type(sub).__name__}: DP-SGD cannot train through "
                    "BatchNorm (it mixes samples of a batch); use an encoder and blocks with "
                    "GroupNorm/LayerNorm (e.g. the presets' Swin encoders) or turn off [privacy]"
                )
            if isinstance(sub, TORCH_FUNC_HANDLES):
                continue
            # The validators ModuleValidator.validate runs, one module at a time: its errors
            # do not say which submodule they are about, and we name it.
            validator = ModuleValidator.VALIDATORS.get(type(sub))
            if validator is not None and (errors := validator(sub)):
                raise PrivacyError(
                    f"module '{where}' is a {type(sub).__name__} that DP-SGD cannot train as "
                    f"configured (Opacus: {errors[0]}); turn off [privacy] or change the model"
                )
