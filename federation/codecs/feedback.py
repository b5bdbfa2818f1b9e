"""Error feedback: what a lossy codec dropped from a site's change is sent next time.

``carried = change + residual``; the site sends ``encode(carried)`` and keeps
``residual' = carried - decode(encode(carried))``. Over rounds 1..T the server receives
``sum(change_t) - residual_T``: the sum of the true changes up to ONE round's quantisation
error, however many rounds pass (without it, each round's error would add up).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from federation.codecs.base import FLOAT, Codec, Encoded


def residual_fits(residual: Mapping[str, np.ndarray], change: Mapping[str, np.ndarray]) -> bool:
    """True when ``residual`` has a tensor of the same shape for every float32 change key."""
    floats = {k for k, v in change.items() if np.asarray(v).dtype == FLOAT}
    return set(residual) == floats and all(
        np.shape(residual[k]) == np.shape(change[k]) for k in floats
    )


def encode_with_feedback(
    codec: Codec,
    change: Mapping[str, np.ndarray],
    residual: Mapping[str, np.ndarray] | None,
) -> tuple[Encoded, dict[str, np.ndarray]]:
    """``change`` plus ``residual`` (None or one that does not fit: none) encoded, and the
    new residual (the float32 part encoding dropped)."""
    use = residual if residual is not None and residual_fits(residual, change) else {}
    carried = {
        k: (np.asarray(v) + use[k]).astype(FLOAT) if k in use else np.asarray(v)
        for k, v in change.items()
    }
    encoded = codec.encode(carried)
    decoded = codec.decode(encoded.entries, carried)
    new_residual = {
        k: (v - decoded[k]).astype(FLOAT) for k, v in carried.items() if v.dtype == FLOAT
    }
    return encoded, new_residual
