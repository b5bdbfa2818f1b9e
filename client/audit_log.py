"""The site's own record of what it sent: each reply in plain words, and in ``sent.jsonl``.

Every reply is logged before it leaves (Flower sends it when the handler returns) and
appended to ``<state_dir>/sent.jsonl`` (the site file's own state folder, over all runs):
one JSON object per reply, with when, to whom, which parameter groups (in bytes), every
scalar and, under DP-SGD, the privacy spent so far. A round the site refused is recorded
too, with its reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from client.message_clock import describe
from federation import wire
from federation.secagg import WEIGHT_PREFIX as SECAGG_WEIGHT_PREFIX
from umedpt import contract
from umedpt.config import SiteConfig
from umedpt.privacy import PrivacyBudget

log = logging.getLogger(__name__)

SENT_LOG = "sent.jsonl"  # in the site's state folder: one JSON object per reply sent


@dataclass(frozen=True)
class SentReply:
    """One reply as it leaves the site, for the site's log and ``sent.jsonl``."""

    kind: str  # "train" | "evaluate"
    server_round: int
    groups: dict[str, int]  # parameter group -> bytes of its arrays in the reply
    metrics: dict[str, float]  # every scalar in the reply
    train_seconds: float | None = None  # measured here; under DP it is not in ``metrics``
    steps: int = 0
    reason: str | None = None  # why nothing was trained (kind "refused")
    timings: dict[str, float] | None = None  # where the message's time went (message_clock)


def bytes_per_group(sizes: Mapping[str, int]) -> dict[str, int]:
    """Bytes per parameter group (``encoder``, ``blocks.<b>``) from bytes per array key
    (a masked reply's per-group weight counts towards its group)."""
    groups: dict[str, int] = {}
    for key, size in sizes.items():
        if key.startswith(SECAGG_WEIGHT_PREFIX):
            group = key.removeprefix(SECAGG_WEIGHT_PREFIX)
        else:
            group = contract.group_of(key)
        groups[group] = groups.get(group, 0) + size
    return groups


def format_bytes(size: int) -> str:
    if size >= 100_000:
        return f"{size / 1e6:.1f} MB"
    return f"{size / 1e3:.1f} kB"


class SentLog:
    """One site's log of what it sent in one run (``run_key``), over ``tasks``."""

    def __init__(
        self,
        site: SiteConfig,
        run_key: str,
        tasks: Sequence[str],
        budget: PrivacyBudget | None = None,
    ) -> None:
        self.site = site
        self.run_key = run_key
        self.tasks = list(tasks)
        self.budget = budget
        self.path = site.state_dir / SENT_LOG

    def sent(self, reply: SentReply, *, coordinator: str | None = None) -> str:
        """Say in plain words what ``reply`` carries, and append it to ``sent.jsonl``.

        Returns the line. A ``sent.jsonl`` that cannot be written is only warned about.
        """
        epsilon, delta = self._privacy_spent(reply)
        to = f"the coordinator at {coordinator}" if coordinator else "the coordinator"
        scalars = (
            f"{len(reply.metrics)} scalars ("
            + ", ".join(f"{k} {_number(v)}" for k, v in reply.metrics.items())
            + ")"
        )
        tasks = _join(self.tasks)
        if reply.kind == "train":
            sent = _join([f"{g} ({format_bytes(n)})" for g, n in reply.groups.items()])
            line = (
                f"round {reply.server_round}: trained tasks {tasks} for {reply.steps} steps in "
                f"{reply.train_seconds or 0.0:.1f} s; sent {sent} and {scalars} to {to}"
            )
        elif self.budget is not None:  # the count sent is not the validation set's size
            line = (
                f"round {reply.server_round}: evaluated tasks {tasks} on their validation "
                f"samples; sent no weights, only {scalars}, to {to}"
            )
        else:
            count = int(reply.metrics.get(wire.NUM_EXAMPLES, 0))
            line = (
                f"round {reply.server_round}: evaluated tasks {tasks} on {count} validation "
                f"samples; sent no weights, only {scalars}, to {to}"
            )
        if reply.timings:
            line += f"; timings: {describe(reply.timings)}"
        if epsilon is not None and self.site.privacy is not None:
            line += (
                f"; privacy spent so far: epsilon {epsilon:.2f} of "
                f"{self.site.privacy.target_epsilon:g} (delta {delta:g})"
            )
        log.info("site %s: %s", self.site.name, line)
        self._append(reply, epsilon, delta, coordinator)
        return line

    def refused(self, server_round: int, reason: str) -> None:
        """Record a round the site refused (only the reason was sent; the log already said
        why)."""
        refused = SentReply("refused", server_round, {}, {}, reason=reason)
        epsilon, delta = self._privacy_spent(refused)
        self._append(refused, epsilon, delta, None)

    def _privacy_spent(self, reply: SentReply) -> tuple[float | None, float | None]:
        if self.budget is None:
            return None, None
        if wire.DP_EPSILON in reply.metrics:  # what the reply itself says
            return reply.metrics[wire.DP_EPSILON], reply.metrics.get(wire.DP_DELTA)
        return self.budget.ledger.epsilon, self.budget.config.target_delta

    def _append(
        self, reply: SentReply, epsilon: float | None, delta: float | None, to: str | None
    ) -> None:
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "site": self.site.name,
            "run_key": self.run_key,
            "round": reply.server_round,
            "kind": reply.kind,
            "to": to,
            "groups": reply.groups,
            "metrics": reply.metrics,
            "train_seconds": reply.train_seconds,
            "timings": reply.timings,
            "reason": reply.reason,
            "epsilon": epsilon,
            "delta": delta,
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
        except OSError as exc:
            log.warning("site %s: could not append to %s: %s", self.site.name, self.path, exc)


def _number(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)


def _join(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none"
