"""Typed errors of private training: each says why and what to do instead."""

from __future__ import annotations


class PrivacyError(RuntimeError):
    """Private training cannot run as configured (e.g. a BatchNorm layer in the model)."""


class BudgetExhaustedError(PrivacyError):
    """Training this round would spend more than the site's privacy budget."""

    def __init__(self, epsilon_after: float, target_epsilon: float) -> None:
        self.epsilon_after = epsilon_after
        self.target_epsilon = target_epsilon
        super().__init__(
            f"privacy budget exhausted: this round would spend epsilon {epsilon_after:.3g} > "
            f"target {target_epsilon:.3g}; the site stops contributing (start a new run with a "
            "new budget only if the data's owners accept the added spend)"
        )


class NoiseTooLargeError(BudgetExhaustedError):
    """The budget left needs more noise than the site's ``max_noise_multiplier``: the site
    sits the round out rather than send mostly noise."""

    def __init__(
        self,
        task: str,
        noise_multiplier: float,
        max_noise_multiplier: float,
        spent: float,
        target_epsilon: float,
    ) -> None:
        self.task = task
        self.noise_multiplier = noise_multiplier
        self.max_noise_multiplier = max_noise_multiplier
        self.epsilon_after = spent
        self.target_epsilon = target_epsilon
        PrivacyError.__init__(
            self,
            f"privacy budget exhausted: task '{task}' would need noise multiplier "
            f"{noise_multiplier:.3g} > max_noise_multiplier {max_noise_multiplier:g} to stay "
            f"within target epsilon {target_epsilon:.3g} (spent so far {spent:.3g}); the site "
            "sits this round out instead of sending mostly noise",
        )
