"""Per-group reduction: the encoder over every accepted reply, each block over its users.

The rule itself is one function, ``Reducer``: a group's arrays from the sites that carry
it (one dict per site, same keys and shapes) and their weights, reduced to one dict.
``GroupedStrategy.reduce_group`` is that hook; ``weighted_mean`` is FedAvg's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord

from umedpt import contract

Reducer = Callable[[str, list[dict[str, np.ndarray]], list[float]], dict[str, np.ndarray]]


def weighted_mean(
    arrays: list[dict[str, np.ndarray]], weights: list[float]
) -> dict[str, np.ndarray]:
    """Sum of ``array * weight / total``, key by key.

    Mirrors ``flwr.serverapp.strategy.strategy_utils.aggregate_arrayrecords`` (Flower
    1.42.0), same arithmetic in the same order, so results are bit-identical to FedAvg's.
    That function takes RecordDicts of Flower Arrays; calling it from here would mean
    re-serialising every decoded payload once more.
    """
    total = sum(weights)
    factors = [w / total for w in weights]
    reduced = {k: v * factors[0] for k, v in arrays[0].items()}
    for part, factor in zip(arrays[1:], factors[1:], strict=True):
        for key, value in part.items():
            reduced[key] += value * factor
    return reduced


def reduce_by_group(
    reference: ArrayRecord,
    contributions: Sequence[tuple[ArrayRecord, float]],
    reduce: Reducer,
) -> tuple[ArrayRecord, list[str]]:
    """Reduce each group of ``reference`` over the contributions that carry it.

    Returns a full record in ``reference``'s key order and dtypes (groups nobody sent
    keep their values) and the groups that were reduced, sorted.
    """
    by_group: dict[str, list[tuple[dict[str, Array], float]]] = {}
    for arrays, weight in contributions:
        split: dict[str, dict[str, Array]] = {}
        for key, value in arrays.items():
            split.setdefault(contract.group_of(key), {})[key] = value
        for group, subset in split.items():
            by_group.setdefault(group, []).append((subset, weight))

    reduced: dict[str, np.ndarray] = {}
    updated = []
    for group in sorted({contract.group_of(k) for k in reference.keys()}):
        if not (parts := by_group.get(group)):
            continue
        arrays = [{k: v.numpy() for k, v in subset.items()} for subset, _ in parts]
        result = reduce(group, arrays, [w for _, w in parts])
        if problem := contract.state_mismatch(result, arrays[0], check_dtype=False):
            raise ValueError(f"reducing group '{group}' gave other arrays than it got: {problem}")
        reduced.update(result)
        updated.append(group)
    merged = ArrayRecord(
        {
            k: Array(np.asarray(reduced[k]).astype(np.dtype(v.dtype), copy=False))
            if k in reduced
            else v
            for k, v in reference.items()
        }
    )
    return merged, updated
