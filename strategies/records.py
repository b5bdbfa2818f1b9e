"""What a round leaves behind: its per-site record, its failure, and payload sizes."""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import ArrayRecord


@dataclass
class RoundRecord:
    """What happened in one round, per site (by name): for reports and tests."""

    round: int
    started: float = 0.0
    seconds: float = 0.0
    bytes_sent: dict[str, int] = field(default_factory=dict)  # training payloads
    bytes_received: dict[str, int] = field(default_factory=dict)
    bytes_sent_for_evaluation: dict[str, int] = field(default_factory=dict)
    # strategies.sampling: how many known sites were connected when the round's training
    # sites were drawn (0: no sampling, every connected site trained)
    sites_available: int = 0
    train_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    eval_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (site, reason)
    updated_groups: list[str] = field(default_factory=list)
    # strategies.defences: each candidate's change norm per group, and the weight the
    # server gave each accepted training reply (before max-site-share)
    update_norms: dict[str, dict[str, float]] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    # strategies.central_dp: per group released this round, {noise_std, epsilon, ...}, and
    # per site the groups whose release included its change (for its composed epsilon)
    client_dp: dict[str, dict[str, float]] = field(default_factory=dict)
    client_dp_sites: dict[str, list[str]] = field(default_factory=dict)


class RoundFailedError(RuntimeError):
    """A round got fewer usable replies than the configured minimum of sites."""


def arrays_nbytes(arrays: ArrayRecord) -> int:
    """Bytes of the serialised arrays as they travel (npy payloads)."""
    return sum(len(a.data) for a in arrays.values())
