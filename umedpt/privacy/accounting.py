"""Privacy accounting through Opacus' accountants: nothing here does the maths by hand.

A task's history is Opacus' own: ``[(noise_multiplier, sample_rate, steps), ...]``. The
guarantee assumes each step's batch was Poisson-sampled with that rate (see
:class:`umedpt.training.streams.PoissonStream`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from umedpt.config import ACCOUNTANTS

History = Sequence[tuple[float, float, int]]  # (noise multiplier, sample rate, steps)


def check_accountant(name: str) -> str:
    if name not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {name!r}; use one of {', '.join(ACCOUNTANTS)}")
    return name


@functools.lru_cache(maxsize=256)  # pure, and a site asks again every round
def noise_multiplier_for(
    *,
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
) -> float:
    """The smallest noise multiplier whose ``steps`` steps stay within the target (Opacus)."""
    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=target_delta,
            sample_rate=sample_rate,
            steps=max(1, steps),
            accountant=check_accountant(accountant),
        )
    )


def epsilon_of(history: History, *, delta: float, accountant: str = "rdp") -> float:
    """Epsilon spent by ``history`` at ``delta``; 0 for an empty history."""
    steps = tuple((float(s), float(q), int(n)) for s, q, n in history if n > 0)
    if not steps:
        return 0.0
    return _epsilon(steps, float(delta), check_accountant(accountant))


@functools.lru_cache(maxsize=4096)  # pure; a plan asks the same histories again under the lock
def _epsilon(steps: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    acct = create_accountant(accountant)
    acct.history = list(steps)
    return float(acct.get_epsilon(delta=delta))
