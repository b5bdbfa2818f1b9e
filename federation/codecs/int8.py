"""``int8``: a quarter of the bytes, per-tensor linear quantisation of a site's CHANGE.

Each float32 tensor ``v`` travels as ``q = round(v / s)`` in int8 (-127..127) with its
scale ``s = max|v| / 127`` (float32, shape (1,)) in the entry ``<key>@scale``; it decodes to
``q * s``, within ``s / 2`` of ``v`` per element. The site keeps what rounding lost (error
feedback, :mod:`federation.codecs.feedback`) and adds it to its next change, so the error
does not build up over rounds.

Only the uplink: quantising the global WEIGHTS per tensor would be far too coarse (a
LayerNorm's weights near 1 and its biases near 0 share no good scale), and sending the
change of the global would need every site to hold the previous global (a site that
joins late, sat rounds out or restarted does not). The server therefore sends int8 runs'
weights in bf16 (``downlink``): half the bytes down, a quarter up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from federation.codecs.base import FLOAT, SCALE_SUFFIX, Codec, PayloadError, entry

QUANT = np.dtype(np.int8)
LEVELS = 127  # symmetric: -127..127, so that 0 is exact and the scale is max|v| / 127


class Int8(Codec):
    name = "int8"
    downlink = "bf16"
    error_feedback = True

    def encode_tensor(self, key: str, values: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        peak = float(np.max(np.abs(values))) if values.size else 0.0
        if not math.isfinite(peak):
            # int8 has no NaN: a change that is not finite is a diverged site's.
            raise FloatingPointError(f"int8: '{key}' holds non-finite values")
        scale = np.float32(peak / LEVELS)
        if scale > 0:
            q = np.rint(values.astype(np.float64) / np.float64(scale))
            q = np.clip(q, -LEVELS, LEVELS).astype(QUANT)
        else:
            q = np.zeros(values.shape, QUANT)
        return {key: q, key + SCALE_SUFFIX: np.array([scale], FLOAT)}, False

    def decode_tensor(
        self, key: str, entries: Mapping[str, np.ndarray], shape: tuple[int, ...] | None
    ) -> tuple[np.ndarray, list[str]]:
        q = entry(entries, key, (QUANT,), shape)
        scale_key = key + SCALE_SUFFIX
        scale = entry(entries, scale_key, (FLOAT,), (1,))
        s = float(scale[0])
        if not math.isfinite(s) or s < 0:
            raise PayloadError(f"'{scale_key}' is {s}, expected a finite scale >= 0")
        return q.astype(FLOAT) * np.float32(s), [key, scale_key]
