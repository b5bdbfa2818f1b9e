"""A site's budget: per-task noise planned for the whole run, checked before every round.

Each task is Poisson-sampled on its own and accounted by the data it reads (its
:class:`~umedpt.privacy.data_key.DataKey`): the history of a task is every recorded spend on
the same data, under whatever task name, and tasks of the site that read the same data
compose within a round. Tasks on disjoint data are accounted apart and the site's epsilon
is the largest of its tasks' (parallel composition: one patient's sample is in one task's
data).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from umedpt.config import PrivacyConfig
from umedpt.privacy.accounting import History, epsilon_of, noise_multiplier_for
from umedpt.privacy.data_key import DataKey
from umedpt.privacy.errors import BudgetExhaustedError, NoiseTooLargeError
from umedpt.privacy.ledger import LedgerEntry, PrivacyLedger, same_data

# A noise multiplier above this makes a site's update mostly noise: the site warns.
LARGE_NOISE_MULTIPLIER = 5.0
PLAN_TOLERANCE = 1e-3  # a plan's noise multiplier is at most this much (relative) above the least


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
        data: Mapping[str, DataKey] | None = None,
    ) -> None:
        bad = {t: q for t, q in sample_rates.items() if not 0 < q <= 1}
        if bad:
            raise ValueError(f"sample rates must be in (0, 1], got {bad}")
        self.config = config
        self.ledger = ledger
        self.sample_rates = dict(sample_rates)
        self.planned_steps = planned_steps
        self.run_key = run_key
        # task -> the data its spend is charged to (a task without one: by its name)
        self.data: dict[str, DataKey] = dict(data or {})
        self.noise_multipliers = self.plan()

    def plan(self) -> dict[str, float]:
        """Each task's noise multiplier for this run.

        The same plan on every restart: a deterministic function of the site file, the run
        and the earlier runs' spend on the same data (which this run's rounds must leave
        room for). Tasks of the site on the same data get one multiplier, planned for all
        their steps together.
        """
        plan: dict[str, float] = {}
        for group in self._groups():
            # each recorded spend once, though it may fall on several tasks of the group
            prior = self.ledger.history_of(
                {t: self.data.get(t) for t in group}, other_than_run=self.run_key
            )
            rates = [self.sample_rates[t] for t in group]
            sigma = plan_noise(self.config, rates, self.planned_steps, prior)
            plan.update(dict.fromkeys(group, sigma))
        return plan

    def refresh(self) -> bool:
        """Under the ledger's lock: re-read it, charge format-1 records to this site's data
        (saved), and plan again; True if the plan changed."""
        self.ledger.reload()
        if self.data and self.ledger.adopt(self.data):
            self.ledger.save()
        before = self.noise_multipliers
        self.noise_multipliers = self.plan()
        return self.noise_multipliers != before

    def _same_data(self, task: str) -> list[str]:
        """The site's tasks that read ``task``'s data (``task`` among them)."""
        key = self.data.get(task)
        return [u for u in self.sample_rates if same_data(task, key, u, self.data.get(u))]

    def _groups(self) -> list[list[str]]:
        """The site's tasks in groups that share data (connected: a ~ b, b ~ c)."""
        groups: list[list[str]] = []
        seen: set[str] = set()
        for task in self.sample_rates:
            if task in seen:
                continue
            group, todo = [], [task]
            while todo:
                t = todo.pop()
                if t not in seen:
                    seen.add(t)
                    group.append(t)
                    todo.extend(self._same_data(t))
            groups.append(sorted(group))
        return groups

    def dpsgd(self, *, chunk_size: int = 8) -> DPSGDConfig:
        return DPSGDConfig(self.config.max_grad_norm, dict(self.noise_multipliers), chunk_size)

    def task_epsilons(self, extra_steps: int = 0) -> dict[str, float]:
        """Each task's epsilon after the ledger's rounds plus ``extra_steps`` planned steps."""
        return {
            task: epsilon_of(
                [
                    *self.ledger.history(task, key=self.data.get(task)),
                    *(
                        (self.noise_multipliers[u], self.sample_rates[u], extra_steps)
                        for u in self._same_data(task)
                    ),
                ],
                delta=self.config.target_delta,
                accountant=self.config.accountant,
            )
            for task in self.sample_rates
        }

    def epsilon_after(self, steps: int) -> float:
        """The site's epsilon (max over tasks) if it trained ``steps`` more steps."""
        return max(self.task_epsilons(steps).values(), default=0.0)

    @property
    def spent(self) -> float:
        return self.epsilon_after(0)

    @property
    def noise_multiplier(self) -> float:
        """The largest of the tasks' noise multipliers (the noisiest task's)."""
        return max(self.noise_multipliers.values(), default=0.0)

    def check_noise(self) -> None:
        """NoiseTooLargeError where a task's planned noise multiplier is above the site's
        ``max_noise_multiplier``: the site would send mostly noise, so it sits out."""
        limit = self.config.max_noise_multiplier
        if limit is None:
            return
        over = {t: s for t, s in self.noise_multipliers.items() if s > limit}
        if over:
            task = max(over, key=over.__getitem__)
            raise NoiseTooLargeError(
                task, over[task], limit, self.spent, self.config.target_epsilon
            )

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
            data={t: k for t, k in self.data.items() if t in self.sample_rates},
        )
        self.ledger.append(entry)
        return entry


def target_delta_problem(target_delta: float, train_sizes: Mapping[str, int]) -> str | None:
    """Why ``target_delta`` is too large for tasks of ``train_sizes`` training samples, or None.

    Delta must be below 1/n for every task's n: publishing one of the n samples, picked at
    random, in the clear is (0, 1/n)-DP, so at delta >= 1/n the guarantee says nothing.
    """
    if not train_sizes:
        return None
    task = max(train_sizes, key=train_sizes.__getitem__)
    n = train_sizes[task]
    if target_delta < 1 / max(n, 1):
        return None
    return (
        f"must be below 1/n = {1 / max(n, 1):.3g}, where n = {n} is the training samples of "
        f"task '{task}' (at delta >= 1/n the guarantee allows leaking a whole sample); "
        f"got {target_delta:g}"
    )


def plan_noise(
    config: PrivacyConfig, sample_rates: float | Sequence[float], steps: int, prior: History
) -> float:
    """The smallest noise multiplier whose ``steps`` steps (of each of ``sample_rates``: tasks
    on the same data), after the ``prior`` rounds of earlier runs, stay within the target
    (Opacus' accountant; the search is a bisection).

    For one sample rate without prior spend this is Opacus' ``get_noise_multiplier``. When
    earlier runs left no room, the plan is the fresh-budget one and
    :meth:`PrivacyBudget.check` refuses the first round, saying why.
    """
    rates = [sample_rates] if isinstance(sample_rates, int | float) else list(sample_rates)

    def epsilon(sigma: float) -> float:
        return epsilon_of(
            [*prior, *((sigma, q, steps) for q in rates)],
            delta=config.target_delta,
            accountant=config.accountant,
        )

    fresh = noise_multiplier_for(
        target_epsilon=config.target_epsilon,
        target_delta=config.target_delta,
        sample_rate=max(rates),
        steps=steps,
        accountant=config.accountant,
    )
    unspent = len(rates) == 1 and not any(n for *_, n in prior)
    if unspent or epsilon(fresh) <= config.target_epsilon:
        return fresh
    low, high = fresh, 2 * fresh
    while epsilon(high) > config.target_epsilon:
        low, high = high, 2 * high
        if high > 1e4:  # the earlier runs alone spent the budget
            return fresh
    # ``high`` always stays within the target: stop once it is within 0.1% of the least
    # noise that is (each step asks the accountant, which is slow at large sample rates).
    while high - low > PLAN_TOLERANCE * high:
        middle = (low + high) / 2
        low, high = (low, middle) if epsilon(middle) <= config.target_epsilon else (middle, high)
    return high
