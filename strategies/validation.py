"""Checks on a site's reply before it may touch the global weights."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Array, Message


def reply_problem(
    message: Message,
    *,
    expected_keys: Sequence[str],
    reference: Mapping[str, Array],
    weight_key: str,
    needs_arrays: bool,
) -> str | None:
    """Why a reply must be rejected, or None when it is acceptable.

    Rejected: error replies; anything but one MetricRecord (and, for training, one
    ArrayRecord); a missing, non-finite or non-positive weight; keys other than exactly
    those the site was sent (e.g. a head leaking out); wrong shapes or dtypes;
    non-finite values.
    """
    if message.has_error():
        return f"the site reported an error (code {message.error.code}): {message.error.reason}"
    content = message.content
    if len(content.metric_records) != 1:
        return f"expected 1 MetricRecord, got {len(content.metric_records)}"
    metrics = next(iter(content.metric_records.values()))
    weight = metrics.get(weight_key)
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not math.isfinite(weight)
        or weight <= 0
    ):
        return f"'{weight_key}' must be a positive number, got {weight!r}"
    if not needs_arrays:
        if content.array_records:
            return "an evaluation reply must not carry arrays"
        return None
    if len(content.array_records) != 1:
        return f"expected 1 ArrayRecord, got {len(content.array_records)}"
    arrays = next(iter(content.array_records.values()))
    keys = list(arrays.keys())
    if keys != list(expected_keys):
        unexpected = sorted(set(keys) - set(expected_keys))
        missing = sorted(set(expected_keys) - set(keys))
        return (
            f"keys differ from those sent: unexpected {unexpected[:5]}, missing {missing[:5]}"
            + (" (out of order)" if not unexpected and not missing else "")
        )
    for key in keys:
        got, want = arrays[key], reference[key]
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            return (
                f"'{key}' has shape {tuple(got.shape)} and dtype {got.dtype}, expected "
                f"{tuple(want.shape)} and {want.dtype}"
            )
        try:
            values = got.numpy()
        except Exception as exc:  # malformed payload: cannot even be decoded
            return f"'{key}' cannot be decoded: {exc}"
        if not np.isfinite(values).all():
            return f"'{key}' contains non-finite values"
    return None
