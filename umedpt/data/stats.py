"""Plain numbers for data summaries (JSON-serialisable), shared by the task types."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np


def describe(values: Sequence[float] | Sequence[int]) -> dict[str, float]:
    """min / mean / median / max of ``values`` (all 0 for no values)."""
    if not values:
        return {"min": 0.0, "mean": 0.0, "median": 0.0, "max": 0.0}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "min": float(arr.min()),
        "mean": round(float(arr.mean()), 4),
        "median": float(np.median(arr)),
        "max": float(arr.max()),
    }


def class_counts(labels: Iterable[int], classes: Sequence[str]) -> dict[str, int]:
    """How often each class index occurs, by class name (0 for absent classes)."""
    counts = Counter(labels)
    return {name: counts.get(i, 0) for i, name in enumerate(classes)}
