"""The site's privacy ledger: every round's spend, on disk, append-only.

One JSON file (``privacy-ledger.json``) per site, in the site's own ``state_dir`` (never a
folder the server names: a server must not be able to hand a site an empty ledger), over
every run the site takes part in. It is rewritten atomically (a temporary file, fsync,
``os.replace``, fsync of the folder) after every round, so a crash leaves either the old
or the new ledger, never half of one. A round that is repeated (after a server restart) is
appended again: the noisy update of the first attempt may have left the site, so its
spend stays.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from umedpt.privacy.accounting import History

LEDGER_FILE = "privacy-ledger.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LedgerEntry:
    """One trained round: its steps, per-task sample rates and noise, the spend after it."""

    round: int
    steps: int
    sample_rates: Mapping[str, float]  # task -> Poisson sample rate
    noise_multipliers: Mapping[str, float]  # task -> noise multiplier
    epsilon: float  # spent so far (after this round): max over the site's tasks
    delta: float
    task_epsilons: Mapping[str, float] = field(default_factory=dict)  # task -> spent so far
    accountant: str = "rdp"
    run_key: str = ""  # the federated run the round belonged to

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LedgerEntry:
        return cls(
            round=int(data["round"]),
            steps=int(data["steps"]),
            sample_rates={k: float(v) for k, v in data["sample_rates"].items()},
            noise_multipliers={k: float(v) for k, v in data["noise_multipliers"].items()},
            epsilon=float(data["epsilon"]),
            delta=float(data["delta"]),
            task_epsilons={k: float(v) for k, v in data.get("task_epsilons", {}).items()},
            accountant=str(data.get("accountant", "rdp")),
            run_key=str(data.get("run_key", "")),
        )


class PrivacyLedger:
    """The rounds a site trained privately, loaded from and saved to one JSON file."""

    def __init__(self, path: Path, entries: list[LedgerEntry] | None = None) -> None:
        self.path = path
        self.entries: list[LedgerEntry] = list(entries or [])

    @classmethod
    def load(cls, path: str | Path) -> PrivacyLedger:
        """The ledger at ``path``; an empty one if there is none yet."""
        path = Path(path)
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entries = [LedgerEntry.from_dict(e) for e in data["entries"]]
        except (ValueError, KeyError, TypeError) as exc:
            # Never start from zero over a damaged ledger: that would forget spent budget.
            raise ValueError(
                f"privacy ledger {path} is unreadable ({exc}); restore it from a backup "
                "rather than deleting it: deleting it would forget the budget already spent"
            ) from exc
        return cls(path, entries)

    def append(self, entry: LedgerEntry) -> None:
        """Add a round and write the ledger atomically."""
        self.entries.append(entry)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"version": FORMAT_VERSION, "entries": [_plain(e) for e in self.entries]}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a power loss
        finally:
            os.close(folder)

    def history(self, task: str, *, other_than_run: str | None = None) -> History:
        """Opacus' accountant history of one task over every recorded round (of every run,
        or of the runs other than ``other_than_run``)."""
        return [
            (e.noise_multipliers[task], e.sample_rates[task], e.steps)
            for e in self.entries
            if task in e.noise_multipliers and e.run_key != other_than_run
        ]

    @property
    def epsilon(self) -> float:
        """Spent so far, as recorded by the latest round (0 before any)."""
        return self.entries[-1].epsilon if self.entries else 0.0

    @property
    def total_steps(self) -> int:
        return sum(e.steps for e in self.entries)


def _plain(entry: LedgerEntry) -> dict[str, Any]:
    data = asdict(entry)
    for key in ("sample_rates", "noise_multipliers", "task_epsilons"):
        data[key] = dict(getattr(entry, key))
    return data
