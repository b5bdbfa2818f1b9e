"""Checks on a site's reply before it may touch the global weights."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Array, Message

from umedpt import contract


def reply_problem(
    message: Message,
    *,
    expected_keys: Sequence[str],
    reference: Mapping[str, Array],
    weight_key: str | None,
    needs_arrays: bool,
) -> str | None:
    """Why a reply must be rejected, or None when it is acceptable.

    Rejected: error replies; anything but one MetricRecord (and, for training, one
    ArrayRecord); a missing, non-finite or non-positive ``weight_key`` (unless None: the
    server weighs replies itself, see :mod:`strategies.defences`); arrays that differ from
    those the site was sent in keys, order, shapes or dtypes (e.g. a head leaking out:
    checked by ``umedpt.contract.state_mismatch``); non-finite values.
    """
    if message.has_error():
        return f"the site reported an error (code {message.error.code}): {message.error.reason}"
    content = message.content
    if len(content.metric_records) != 1:
        return f"expected 1 MetricRecord, got {len(content.metric_records)}"
    metrics = next(iter(content.metric_records.values()))
    weight = metrics.get(weight_key) if weight_key is not None else 1.0
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
    expected = {k: reference[k] for k in expected_keys}
    if problem := contract.state_mismatch(arrays, expected, ordered=True, check_dtype=True):
        return f"arrays differ from those sent: {problem}"
    for key, got in arrays.items():
        try:
            values = got.numpy()
        except Exception as exc:  # malformed payload: cannot even be decoded
            return f"'{key}' cannot be decoded: {exc}"
        if not np.isfinite(values).all():
            return f"'{key}' contains non-finite values"
    return None
