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
