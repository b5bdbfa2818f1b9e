"""What a site's training reply says: its scalars and its example count.

Without DP: the time trained, each task's mean training loss and training image count
(for the model card), and the examples trained on. Under DP-SGD only what the privacy
accounting covers or what does not depend on the data leaves: the epsilon and delta spent
so far, the site's target epsilon and this round's noise multiplier (the largest of its
tasks'), and the *expected* examples (a Poisson batch's drawn size depends on who is in the
data; its expectation, sample rate * training samples, is the site's batch size). The
training losses and the time (which follows the drawn batch sizes) stay home.
"""

from __future__ import annotations

from collections.abc import Sequence

from federation import wire
from umedpt.export.provenance import TRAIN_IMAGES
from umedpt.privacy import LedgerEntry
from umedpt.training.trainer import StepReport, TaskRun, sample_rate


def train_metrics(
    report: StepReport,
    runs: Sequence[TaskRun],
    *,
    seconds: float,
    restored_round: int,
    spent: LedgerEntry | None = None,
    target_epsilon: float | None = None,
) -> tuple[dict[str, float], int]:
    """The reply's scalars and example count for ``report``; ``spent``: this round's entry
    in the site's privacy ledger (DP-SGD), None without DP; ``target_epsilon``: the site's
    budget."""
    metrics: dict[str, float] = {
        wire.TRAIN_SECONDS: seconds,
        wire.RESTORED_ROUND: float(restored_round),
        wire.UNIT_WEIGHT: 1.0,
    }
    if spent is not None:
        metrics[wire.DP_EPSILON] = spent.epsilon
        metrics[wire.DP_DELTA] = spent.delta
        if target_epsilon is not None:
            metrics[wire.DP_TARGET_EPSILON] = target_epsilon
        metrics[wire.DP_NOISE_MULTIPLIER] = max(spent.noise_multipliers.values(), default=0.0)
        del metrics[wire.TRAIN_SECONDS]
        return metrics, expected_examples(runs, report.steps)
    for task, loss in report.losses.items():
        metrics[wire.task_metric(task, wire.TRAIN_LOSS)] = loss
    for run in runs:  # for the model card; under DP the dataset size stays home
        images = float(len(run.data["train"]))
        metrics[wire.task_metric(run.config.name, TRAIN_IMAGES)] = images
    return metrics, report.total_examples


def expected_examples(runs: Sequence[TaskRun], steps: int) -> int:
    """The examples ``steps`` DP-SGD steps train on in expectation: per task and step,
    sample rate * training samples (its batch size, or all its samples if fewer)."""
    return sum(round(sample_rate(r) * len(r.data["train"])) * steps for r in runs)
