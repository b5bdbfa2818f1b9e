"""The evaluation protocol: one fixed recipe for every encoder, so only the encoder differs.

Every encoder gets the same head, optimiser, step budget, batch size, data subsets and
model selection; nothing is chosen on the test split. The numbers below are the protocol,
not tuning knobs per encoder (see docs/evaluation.md for why each is what it is).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

MODES = ("frozen", "finetune")
DEFAULT_FRACTIONS = (1.0, 5.0, 10.0, 25.0, 50.0, 100.0)


@dataclass(frozen=True)
class EvalProtocol:
    """How every (encoder, mode, fraction, seed) cell is trained and scored."""

    fractions: tuple[float, ...] = DEFAULT_FRACTIONS  # percent of the target's training split
    modes: tuple[str, ...] = MODES
    seeds: int = 5
    max_steps: int = 300  # step budget of a cell at most ...
    min_steps: int = 100  # ... and at least: small subsets must not measure the warm-up only
    epochs: int = 30  # ... and otherwise this many passes over the subset
    evals: int = 10  # validations per cell (model selection on the validation split)
    head_lr: float = 1e-3  # the fresh neck and head
    encoder_lr: float = 1e-4  # finetune only: the encoder learns 10x slower than the head
    weight_decay: float = 1e-2
    batch_size: int | None = None  # None: the target task's batch_size
    metric: str | None = None  # None: see summary_metric

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"modes must be among {MODES}, got {self.modes}")
        if not self.fractions or any(not 0 < f <= 100 for f in self.fractions):
            raise ValueError(f"fractions are percentages in (0, 100], got {self.fractions}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(
                f"need 1 <= min_steps <= steps, got min_steps {self.min_steps}, "
                f"steps {self.max_steps}"
            )

    def steps_for(self, subset_size: int, batch_size: int) -> int:
        """A cell's step budget: ``epochs`` passes, clamped to [min_steps, max_steps]."""
        passes = self.epochs * math.ceil(subset_size / max(1, batch_size))
        return max(self.min_steps, min(self.max_steps, passes))

    def eval_points(self, steps: int) -> list[int]:
        """The steps after which the validation split is scored (always the last one)."""
        every = max(1, steps // max(1, self.evals))
        points = list(range(every, steps + 1, every))
        return points if points and points[-1] == steps else [*points, steps]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fractions"] = list(self.fractions)
        data["modes"] = list(self.modes)
        return data


def summary_metric(task_type: str, primary_metric: str, chosen: str | None = None) -> str:
    """The metric that selects checkpoints and fills the summary.

    Single-label classification uses balanced accuracy: it equals accuracy on balanced data
    and, unlike accuracy, does not reward predicting the majority class of an imbalanced
    target. Every other task type uses its primary metric (higher is better for all).
    """
    if chosen:
        return chosen
    return "balanced_accuracy" if task_type == "classification" else primary_metric


@dataclass(frozen=True)
class Cell:
    """One unit of work; results.json holds one row per finished cell."""

    encoder: str
    mode: str
    fraction: float
    seed: int

    @property
    def key(self) -> tuple[str, str, float, int]:
        return (self.encoder, self.mode, float(self.fraction), int(self.seed))


@dataclass
class CellResult:
    """What one cell measured (test metrics of the checkpoint chosen on validation)."""

    encoder: str
    mode: str
    fraction: float
    seed: int
    subset_size: int
    steps: int
    best_step: int
    val_metric: float
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def key(self) -> tuple[str, str, float, int]:
        return (self.encoder, self.mode, float(self.fraction), int(self.seed))
