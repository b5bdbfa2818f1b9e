"""Defences against hostile or broken updates: bounds on a change, weights the server decides.

A site controls everything in its reply: the arrays and every number beside them. So

- the weight of a reply is decided here, never read as sent: with equal weighting 1 per
  accepted reply; by examples, the claimed ``num-examples`` capped at what the site said
  when it joined (``examples-per-step`` x ``local-steps``; the first accepted claim when a
  site did not say), and then no site gets more than ``max_site_share`` of any aggregate
  (:func:`capped_shares`);
- a reply whose change from the global weights is too large, in any group (the encoder,
  each block), is rejected (:func:`norm_rejections`): above ``update_norm_bound``
  (absolute), or above ``update_norm_ratio`` x the median change norm of that group in
  the round (with 3 or more sites carrying the group: with 2, the median is the mean of
  the pair and cannot single one out).

Settings come from :class:`UpdatePolicy`; all bounds are off (0 / share 1) by default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from logging import WARNING

import numpy as np
from flwr.app import Array
from flwr.common.logger import log

from umedpt import contract


@dataclass(frozen=True)
class UpdatePolicy:
    """What the server accepts and how much each accepted reply weighs."""

    equal_weights: bool = False
    max_site_share: float = 1.0  # in (0, 1]; 1 = no cap
    norm_bound: float = 0.0  # absolute bound on a group's change norm; 0 = off
    norm_ratio: float = 0.0  # bound as a multiple of the round's median; 0 = off
    local_steps: int = 0  # steps a site is asked to train: its example cap per step


# -- norms of a change, per group ------------------------------------------------------------
def change_norms(arrays: Mapping[str, Array], reference: Mapping[str, Array]) -> dict[str, float]:
    """{group: L2 norm of (update - global) over the group's keys}, in float64."""
    squares: dict[str, float] = {}
    for key, value in arrays.items():
        change = value.numpy().astype(np.float64) - reference[key].numpy().astype(np.float64)
        group = contract.group_of(key)
        squares[group] = squares.get(group, 0.0) + float(np.sum(change * change))
    return {g: math.sqrt(s) for g, s in squares.items()}


def norm_rejections(
    norms: Mapping[str, Mapping[str, float]], *, bound: float, ratio: float
) -> dict[str, str]:
    """{site: why} for the sites whose change norm in some group is above a bound.

    ``norms`` maps each site (by its label) to its change norm per group. The relative
    bound compares a norm with the median of that group's norms over all candidate
    sites of the round (the outlier included: the median is robust to it) and is
    applied only where 3 or more sites carry the group.
    """
    medians: dict[str, float] = {}
    if ratio > 0:
        by_group: dict[str, list[float]] = {}
        for per_group in norms.values():
            for group, norm in per_group.items():
                by_group.setdefault(group, []).append(norm)
        for group, values in by_group.items():
            if len(values) >= 3:
                medians[group] = float(np.median(values))
            else:
                log(
                    WARNING,
                    "update-norm-ratio: group %s has %d site(s) this round; needs 3 to compare",
                    group,
                    len(values),
                )
    problems: dict[str, str] = {}
    for site, per_group in norms.items():
        reasons = []
        for group, norm in sorted(per_group.items()):
            if bound > 0 and norm > bound:
                reasons.append(
                    f"group '{group}' change norm {norm:.4g} > update-norm-bound {bound:.4g}"
                )
            elif group in medians and norm > ratio * medians[group]:
                reasons.append(
                    f"group '{group}' change norm {norm:.4g} > update-norm-ratio {ratio:g} x "
                    f"the round's median {medians[group]:.4g} = {ratio * medians[group]:.4g}"
                )
        if reasons:
            problems[site] = "; ".join(reasons)
    return problems


# -- weights -------------------------------------------------------------------------------
def capped_shares(weights: Sequence[float], max_share: float) -> list[float]:
    """Shares proportional to ``weights`` (summing to 1), none above ``max_share``.

    The excess of a capped share is redistributed over the others in proportion to
    their weights (water-filling). When ``max_share`` < 1/n no feasible split exists:
    the cap becomes 1/n, i.e. equal shares.
    """
    n = len(weights)
    if n == 0:
        return []
    total = float(sum(weights))
    if total <= 0:
        return [1.0 / n] * n
    cap = max(max_share, 1.0 / n)
    shares = [w / total for w in weights]
    fixed: set[int] = set()
    while True:
        over = [i for i in range(n) if i not in fixed and shares[i] > cap * (1 + 1e-12)]
        if not over:
            return shares
        fixed.update(over)
        left = 1.0 - cap * len(fixed)
        free = [i for i in range(n) if i not in fixed]
        free_total = sum(weights[i] for i in free)
        for i in fixed:
            shares[i] = cap
        for i in free:
            shares[i] = left * weights[i] / free_total if free_total > 0 else left / len(free)


class WeightLedger:
    """The weight of each accepted training reply, decided by the server per node.

    ``joined`` gives a node's example cap from its join-time answer (None when it did not
    say); otherwise the first claim accepted from that node becomes its cap for the run.
    """

    def __init__(self, policy: UpdatePolicy) -> None:
        self.policy = policy
        self.caps: dict[int, float] = {}

    def known_cap(self, node: int, *, joined: float | None) -> float | None:
        """The most ``node`` may weigh: its join-time count, else its first accepted claim
        (None before either exists)."""
        return float(joined) if joined else self.caps.get(node)

    def weight(self, node: int, claimed: float | None, *, joined: float | None) -> float:
        if self.policy.equal_weights:
            return 1.0
        if claimed is None or not math.isfinite(claimed) or claimed <= 0:
            return 0.0
        cap = self.caps.setdefault(node, self.known_cap(node, joined=joined) or claimed)
        return min(float(claimed), cap)
