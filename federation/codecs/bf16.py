"""``bf16``: bfloat16, half the bytes with float32's exponent range (no overflow to check).

numpy has no bfloat16: a tensor travels as the uint16 bit patterns of torch's bfloat16
(the upper half of each float32, rounded to nearest even by torch), and is decoded by
shifting them back into the upper half of a float32. Values bf16 represents come back
exactly; others lose at most half a unit in the 8th significant bit (relative 2**-9).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from federation.codecs.base import FLOAT, Codec, entry

BITS = np.dtype(np.uint16)


def to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """The uint16 bit patterns of ``torch.bfloat16`` of float32 ``values``."""
    tensor = torch.from_numpy(np.require(values, np.float32, "C"))  # 0-d stays 0-d
    return tensor.to(torch.bfloat16).view(torch.int16).numpy().view(BITS)


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 bit patterns (exact: bf16 is float32's upper half)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(FLOAT)


class Bf16(Codec):
    name = "bf16"
    downlink = "bf16"

    def encode_tensor(self, key: str, values: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        return {key: to_bf16_bits(values)}, False

    def decode_tensor(
        self, key: str, entries: Mapping[str, np.ndarray], shape: tuple[int, ...] | None
    ) -> tuple[np.ndarray, list[str]]:
        return from_bf16_bits(entry(entries, key, (BITS,), shape)), [key]
