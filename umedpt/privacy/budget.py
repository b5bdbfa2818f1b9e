"""A site's budget: per-task noise planned for the whole run, checked before every round.

Each task holds a disjoint dataset and is Poisson-sampled on its own, so each task is
accounted on its own (its own sample rate and noise multiplier) and the site's epsilon is
the largest of its tasks' (parallel composition: one patient's sample is in one task).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from umedpt.config import PrivacyConfig
from umedpt.privacy.accounting import History, epsilon_of, noise_multiplier_for
from umedpt.privacy.errors import BudgetExhaustedError
from umedpt.privacy.ledger import LedgerEntry, PrivacyLedger


@dataclass(frozen=True)
class DPSGDConfig:
    """What the trainer needs for DP-SGD: clipping norm and each task's noise."""

    max_grad_norm: float
    noise_multipliers: Mapping[str, float]  # task -> noise multiplier
    chunk_size: int = 8  # samples whose per-sample gradients are held at once

    def __post_init__(self) -> None:
        if self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive, got {self.max_grad_norm}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if any(s < 0 for s in self.noise_multipliers.values()):
            raise ValueError("noise multipliers must be >= 0")


class PrivacyBudget:
    """Plans each task's noise for ``planned_steps`` and keeps the site within its target."""

    def __init__(
        self,
        config: PrivacyConfig,
        ledger: PrivacyLedger,
        sample_rates: Mapping[str, float],
        *,
        planned_steps: int,
        run_key: str = "",
    ) -> None:
        bad = {t: q for t, q in sample_rates.items() if not 0 < q <= 1}
        if bad:
            raise ValueError(f"sample rates must be in (0, 1], got {bad}")
        self.config = config
        self.ledger = ledger
        self.sample_rates = dict(sample_rates)
        self.planned_steps = planned_steps
        self.run_key = run_key
        # The same plan on every restart: a deterministic function of the site file, the
        # run and the earlier runs' spend (which this run's rounds must leave room for).
        self.noise_multipliers = {
            task: plan_noise(config, q, planned_steps, ledger.history(task, other_than_run=run_key))
            for task, q in self.sample_rates.items()
        }

    def dpsgd(self, *, chunk_size: int = 8) -> DPSGDConfig:
        return DPSGDConfig(self.config.max_grad_norm, dict(self.noise_multipliers), chunk_size)

    def task_epsilons(self, extra_steps: int = 0) -> dict[str, float]:
        """Each task's epsilon after the ledger's rounds plus ``extra_steps`` planned steps."""
        return {
            task: epsilon_of(
                [*self.ledger.history(task), (self.noise_multipliers[task], q, extra_steps)],
                delta=self.config.target_delta,
                accountant=self.config.accountant,
            )
            for task, q in self.sample_rates.items()
        }

    def epsilon_after(self, steps: int) -> float:
        """The site's epsilon (max over tasks) if it trained ``steps`` more steps."""
        return max(self.task_epsilons(steps).values(), default=0.0)

    @property
    def spent(self) -> float:
        return self.epsilon_after(0)

    def check(self, steps: int) -> float:
        """The epsilon after ``steps`` more steps; BudgetExhaustedError above the target."""
        after = self.epsilon_after(steps)
        if after > self.config.target_epsilon:
            raise BudgetExhaustedError(after, self.config.target_epsilon)
        return after

    def record(self, server_round: int, steps: int) -> LedgerEntry:
        """Append a trained round to the ledger (atomically) and return its entry."""
        # Account what was actually used: this entry's noise enters the history.
        per_task = self.task_epsilons(steps)
        entry = LedgerEntry(
            round=server_round,
            steps=steps,
            sample_rates=dict(self.sample_rates),
            noise_multipliers=dict(self.noise_multipliers),
            epsilon=max(per_task.values(), default=0.0),
            delta=self.config.target_delta,
            task_epsilons=per_task,
            accountant=self.config.accountant,
            run_key=self.run_key,
        )
        self.ledger.append(entry)
        return entry


def plan_noise(config: PrivacyConfig, sample_rate: float, steps: int, prior: History) -> float:
    """The smallest noise multiplier whose ``steps`` steps, after the ``prior`` rounds of
    earlier runs, stay within the target (Opacus' accountant; the search is a bisection).

    Without prior spend this is Opacus' ``get_noise_multiplier``. When earlier runs left
    no room, the plan is the fresh-budget one and :meth:`PrivacyBudget.check` refuses the
    first round, saying why.
    """

    def epsilon(sigma: float) -> float:
        return epsilon_of(
            [*prior, (sigma, sample_rate, steps)],
            delta=config.target_delta,
            accountant=config.accountant,
        )

    fresh = noise_multiplier_for(
        target_epsilon=config.target_epsilon,
        target_delta=config.target_delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant=config.accountant,
    )
    if not any(n for *_, n in prior) or epsilon(fresh) <= config.target_epsilon:
        return fresh
    low, high = fresh, 2 * fresh
    while epsilon(high) > config.target_epsilon:
        low, high = high, 2 * high
        if high > 1e4:  # the earlier runs alone spent the budget
            return fresh
    for _ in range(30):
        middle = (low + high) / 2
        low, high = (low, middle) if epsilon(middle) <= config.target_epsilon else (middle, high)
    return high
