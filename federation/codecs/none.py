"""``none``: float32 weights, as they always travelled (the site sends its weights)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from federation.codecs.base import FLOAT, Codec, entry


class NoCompression(Codec):
    name = "none"
    downlink = "none"
    sends_change = False

    def encode_tensor(self, key: str, values: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        return {key: values}, False

    def decode_tensor(
        self, key: str, entries: Mapping[str, np.ndarray], shape: tuple[int, ...] | None
    ) -> tuple[np.ndarray, list[str]]:
        return entry(entries, key, (FLOAT,), shape), [key]
