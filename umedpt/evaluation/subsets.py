"""Class-stratified subsets of a target's training split, chosen by seed.

The subset depends only on the samples, the fraction and the seed, never on the encoder,
so every encoder is trained on exactly the same images. What a stratum is (the label, the
classes in a mask, ...) is the task type's ``stratum``. All fractions of one seed take
their images from one order, so a larger fraction (nearly always) adds labels to a smaller
one instead of redrawing them.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from umedpt.data.samples import Sample


def subset_size(total: int, fraction: float) -> int:
    """``fraction`` percent of ``total`` samples, at least one."""
    return max(1, min(total, round(total * fraction / 100.0)))


def stratified_subset(
    samples: Sequence[Sample],
    fraction: float,
    seed: int,
    *,
    stratum: Callable[[Sample], Hashable],
) -> list[int]:
    """Indices (sorted) of a class-stratified ``fraction``-percent subset of ``samples``.

    ``stratum`` is what is kept in proportion: the samples' task type's ``stratum``.

    Each stratum gets its share by largest remainder, and at least one sample when the
    subset has room for every stratum; within a stratum the seed's permutation decides.
    """
    total = len(samples)
    if total == 0:
        return []
    size = subset_size(total, fraction)
    rng = np.random.default_rng(_seed_bits(seed))
    order = rng.permutation(total)
    strata: dict[Hashable, list[int]] = defaultdict(list)
    for index in order:
        strata[stratum(samples[int(index)])].append(int(index))
    keys = sorted(strata, key=lambda k: (-len(strata[k]), repr(k)))
    quotas = _quotas({k: len(strata[k]) for k in keys}, size, total)
    chosen = [i for k in keys for i in strata[k][: quotas[k]]]
    return sorted(chosen)


def _quotas(counts: dict[Hashable, int], size: int, total: int) -> dict[Hashable, int]:
    """Samples per stratum: proportional (largest remainder), one at least where room allows."""
    exact = {k: size * n / total for k, n in counts.items()}
    floor_at = 1 if size >= len(counts) else 0
    quotas = {k: min(n, max(floor_at, math.floor(exact[k]))) for k, n in counts.items()}
    while sum(quotas.values()) > size:  # the guaranteed ones overshot: trim the most over share
        k = max((k for k in quotas if quotas[k] > 1), key=lambda k: quotas[k] - exact[k])
        quotas[k] -= 1
    open_ = [k for k in counts if quotas[k] < counts[k]]
    for k in sorted(open_, key=lambda k: -(exact[k] - quotas[k]))[: size - sum(quotas.values())]:
        quotas[k] += 1
    return quotas


def _seed_bits(seed: int) -> int:
    # Derived with SHA-256 so that seed 0 and seed 1 give unrelated permutations everywhere.
    return int.from_bytes(hashlib.sha256(f"umedpt-eval-subset:{seed}".encode()).digest()[:8], "big")
