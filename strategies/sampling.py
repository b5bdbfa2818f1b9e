"""Sites sampled per round (``--sites-per-round N`` / ``--fraction F``): cross-device style.

Each training round trains a seeded random subset of the connected sites the server
knows; evaluation still asks every known site when it is due. The draw depends on the
run's seed, the round and the sites' NAMES (node ids change from run to run in a
simulation), so the same seed and sites give the same subsets, and a resumed run draws
what the uninterrupted one would have.

Under client-level DP the seed is a secret the coordinator keeps in its private state
(:class:`strategies.ClientLevelDP`), not the published run seed: amplification needs that
no one who sees the released weights can tell who was drawn.

Client-level DP counts on it: a site's chance of being in a round's release is
``size / available`` (:attr:`SiteSampling.rate`), which its accountant uses (amplification
by subsampling). Opacus' RDP accountant assumes Poisson sampling at that rate; a draw of
exactly N of M without replacement is the usual stand-in for it (as in DP-FedAvg).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SiteSampling:
    """How many of the available sites train in a round: ``per_round``, else ``fraction``
    of them (rounded down), never fewer than ``minimum`` nor more than are available."""

    per_round: int = 0
    fraction: float = 1.0
    seed: int = 0
    minimum: int = 1

    def __post_init__(self) -> None:
        if self.per_round < 0 or not 0 < self.fraction <= 1 or self.minimum < 1:
            raise ValueError(
                f"site sampling needs per_round >= 0, fraction in (0, 1] and minimum >= 1; "
                f"got {self.per_round}, {self.fraction}, {self.minimum}"
            )

    @property
    def samples(self) -> bool:
        """False when every available site trains in every round."""
        return self.per_round > 0 or self.fraction < 1

    def size(self, available: int) -> int:
        """How many of ``available`` sites train in a round."""
        wanted = self.per_round if self.per_round else int(available * self.fraction)
        return min(available, max(wanted, self.minimum))

    def rate(self, available: int) -> float:
        """A site's chance to be drawn in a round (1 when every site trains)."""
        return self.size(available) / available if available else 1.0

    def choose(self, names: Mapping[int, str], server_round: int) -> list[int]:
        """The nodes that train in ``server_round``: a seeded draw over ``names`` ({node:
        site name}, the available sites), in the order of their names."""
        ordered = sorted(names, key=lambda n: (names[n], n))
        size = self.size(len(ordered))
        if size >= len(ordered):
            return ordered
        rng = np.random.default_rng([self.seed, server_round])
        picked = sorted(rng.choice(len(ordered), size=size, replace=False).tolist())
        return [ordered[i] for i in picked]
