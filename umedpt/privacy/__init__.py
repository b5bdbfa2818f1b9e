"""Sample-level differential privacy (DP-SGD) for a site's multi-task training.

- :mod:`~umedpt.privacy.per_sample`: per-sample gradients (``torch.func``), clipped and summed
- :mod:`~umedpt.privacy.noise`: the Gaussian mechanism on that sum
- :mod:`~umedpt.privacy.step`: one task's private gradient in the multi-task loop
- :mod:`~umedpt.privacy.accounting`: Opacus' accountants (RDP, PRV)
- :mod:`~umedpt.privacy.budget`: per-task noise for a run, the check before each round
- :mod:`~umedpt.privacy.ledger`: every round's spend, on the site's disk, under a file lock
- :mod:`~umedpt.privacy.data_key`: which data a task's spend is charged to
- :mod:`~umedpt.privacy.validation`: no module DP-SGD cannot train (BatchNorm; Opacus' checks)

See docs/privacy.md for what this protects and what it does not.
"""

from umedpt.config import PrivacyConfig
from umedpt.privacy.accounting import epsilon_of, noise_multiplier_for
from umedpt.privacy.budget import (
    LARGE_NOISE_MULTIPLIER,
    DPSGDConfig,
    PrivacyBudget,
    target_delta_problem,
)
from umedpt.privacy.data_key import DataKey, data_key
from umedpt.privacy.errors import BudgetExhaustedError, NoiseTooLargeError, PrivacyError
from umedpt.privacy.ledger import LEDGER_FILE, LedgerEntry, PrivacyLedger
from umedpt.privacy.per_sample import ClippedSum, PerSampleClipper, clipped_grad_sum
from umedpt.privacy.step import PrivateTaskGradient, task_parameters
from umedpt.privacy.validation import check_private_modules

__all__ = [
    "LARGE_NOISE_MULTIPLIER",
    "LEDGER_FILE",
    "BudgetExhaustedError",
    "ClippedSum",
    "DPSGDConfig",
    "DataKey",
    "LedgerEntry",
    "NoiseTooLargeError",
    "PerSampleClipper",
    "PrivacyBudget",
    "PrivacyConfig",
    "PrivacyError",
    "PrivacyLedger",
    "PrivateTaskGradient",
    "check_private_modules",
    "clipped_grad_sum",
    "data_key",
    "epsilon_of",
    "noise_multiplier_for",
    "target_delta_problem",
    "task_parameters",
]
