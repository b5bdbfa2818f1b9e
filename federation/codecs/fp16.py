"""``fp16``: IEEE half precision, half the bytes, with its range checked.

fp16's largest finite value is 65504: a tensor with a finite value beyond it would arrive
as infinities, so that tensor falls back to float32 (the encoder lists it; the sender logs
it) and the rest still travel in 16 bits. fp16 also flushes magnitudes below 6e-8 to zero
(and is coarse below 6e-5): the site sends its CHANGE, whose small entries bf16 keeps
better; fp16 keeps 3 more mantissa bits for values within its range.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from federation.codecs.base import FLOAT, Codec, entry

HALF = np.dtype(np.float16)
FP16_MAX = float(np.finfo(np.float16).max)  # 65504


class Fp16(Codec):
    name = "fp16"
    downlink = "fp16"

    def encode_tensor(self, key: str, values: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        finite = values[np.isfinite(values)]
        if finite.size and float(np.max(np.abs(finite))) > FP16_MAX:
            return {key: values}, True  # beyond fp16's range: float32, said by the caller
        # torch's conversion: numpy's is software, and slow on the subnormals small changes hold
        return {key: torch.from_numpy(np.require(values, requirements="C")).half().numpy()}, False

    def decode_tensor(
        self, key: str, entries: Mapping[str, np.ndarray], shape: tuple[int, ...] | None
    ) -> tuple[np.ndarray, list[str]]:
        value = entry(entries, key, (HALF, FLOAT), shape)
        if value.dtype == HALF:
            return torch.from_numpy(np.require(value, requirements="C")).float().numpy(), [key]
        return value, [key]
