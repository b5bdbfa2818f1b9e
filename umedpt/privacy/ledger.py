"""The site's privacy ledger: every round's spend, on disk, append-only.

One JSON file (``privacy-ledger.json``) per site, in the site's own ``state_dir`` (never a
folder the server names: a server must not be able to hand a site an empty ledger), over
every run the site takes part in. It is rewritten atomically (a temporary file, fsync,
``os.replace``, fsync of the folder) after every round, so a crash leaves either the old
or the new ledger, never half of one. A round that is repeated (after a server restart) is
appended again: the noisy update of the first attempt may have left the site, so its
spend stays.

Every task's spend is charged to its data (:class:`~umedpt.privacy.data_key.DataKey`, in
each entry's ``data``), the task's name is only a label: a renamed task keeps its spend and
two tasks on the same files share one budget. A ledger of format 1 (keyed by task name
only) is read as before; its records stay charged to the task of the same name, and the
first round trained after the update writes that task's data key into them (format 2), so
no recorded spend is lost and a later rename keeps it.

Processes of one site (a SuperExec may run two ClientApps of the site at once) take turns:
:meth:`PrivacyLedger.locked` holds an exclusive ``fcntl.flock`` on
``privacy-ledger.json.lock`` beside the ledger and re-reads the ledger under it. The site
holds it from its budget check through training to the record of the round's spend.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from umedpt.privacy.accounting import History
from umedpt.privacy.data_key import DataKey

LEDGER_FILE = "privacy-ledger.json"
FORMAT_VERSION = 2  # 2: each entry says which data each task's spend is charged to
READABLE_VERSIONS = (1, 2)


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
    # task -> the data its spend is charged to; a task without one (format 1) is its name
    data: Mapping[str, DataKey] = field(default_factory=dict)

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
            data={k: DataKey.from_dict(v) for k, v in data.get("data", {}).items()},
        )


class PrivacyLedger:
    """The rounds a site trained privately, loaded from and saved to one JSON file."""

    def __init__(self, path: Path, entries: list[LedgerEntry] | None = None) -> None:
        self.path = path
        self.entries: list[LedgerEntry] = list(entries or [])
        self._lock_fd: int | None = None  # held while this object has the ledger locked

    @classmethod
    def load(cls, path: str | Path) -> PrivacyLedger:
        """The ledger at ``path``; an empty one if there is none yet."""
        path = Path(path)
        return cls(path, _read(path))

    def reload(self) -> None:
        """Read the ledger again (another process of the site may have appended)."""
        self.entries = _read(self.path)

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def locked(self, on_wait: Callable[[Path], None] | None = None) -> Iterator[PrivacyLedger]:
        """Hold the site's ledger lock (``fcntl.flock``, exclusive) and re-read the ledger.

        Blocks while another process holds it (``on_wait`` is told first, with the lock
        file). The kernel releases the lock when its process ends, a crash included.
        """
        if self._lock_fd is not None:
            raise RuntimeError(f"the privacy ledger {self.path} is already locked")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait(self.lock_path)
                fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_fd = fd
            self.reload()  # what the other processes recorded before we got the lock
            yield self
        finally:
            self._lock_fd = None
            os.close(fd)  # releases the lock

    def append(self, entry: LedgerEntry) -> None:
        """Add a round and write the ledger atomically.

        Without the lock held, it is taken for the append (and the ledger re-read under
        it), so no other process's round is overwritten.
        """
        if self._lock_fd is None:
            with self.locked():
                self.append(entry)
            return
        self.entries.append(entry)
        self.save()

    def adopt(self, keys: Mapping[str, DataKey]) -> bool:
        """Charge the spend of format-1 records (keyed by task name only) to the data of the
        task of the same name in ``keys``; True if any record changed (then save)."""
        changed = False
        for i, entry in enumerate(self.entries):
            missing = {
                t: keys[t] for t in entry.noise_multipliers if t not in entry.data and t in keys
            }
            if missing:
                self.entries[i] = replace(entry, data={**entry.data, **missing})
                changed = True
        return changed

    def unadopted(self) -> set[str]:
        """Task names whose spend is recorded without a data key (format 1)."""
        return {t for e in self.entries for t in e.noise_multipliers if t not in e.data}

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

    def history(
        self, task: str, *, key: DataKey | None = None, other_than_run: str | None = None
    ) -> History:
        """Opacus' accountant history of the data of ``task`` (its ``key``) over every
        recorded round (of every run, or of the runs other than ``other_than_run``): each
        recorded spend on the same data, whichever task made it."""
        return self.history_of({task: key}, other_than_run=other_than_run)

    def history_of(
        self, tasks: Mapping[str, DataKey | None], *, other_than_run: str | None = None
    ) -> History:
        """:meth:`history` of the data of any of ``tasks`` (task -> key), each spend once."""
        return [
            (e.noise_multipliers[label], e.sample_rates[label], e.steps)
            for e in self.entries
            if e.run_key != other_than_run
            for label in e.noise_multipliers
            if any(same_data(label, e.data.get(label), t, k) for t, k in tasks.items())
        ]

    @property
    def epsilon(self) -> float:
        """Spent so far, as recorded by the latest round (0 before any)."""
        return self.entries[-1].epsilon if self.entries else 0.0

    @property
    def total_steps(self) -> int:
        return sum(e.steps for e in self.entries)


def same_data(task: str, key: DataKey | None, other: str, other_key: DataKey | None) -> bool:
    """Whether task ``task`` (data ``key``) and task ``other`` (``other_key``) train on the same
    data: by their data keys; where one has none (a format-1 record), by name."""
    if key is not None and other_key is not None:
        return key.same_data(other_key)
    return task == other


def _read(path: Path) -> list[LedgerEntry]:
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = data.get("version", 1)
        if version not in READABLE_VERSIONS:
            raise ValueError(f"format version {version!r}, this umedpt reads {READABLE_VERSIONS}")
        return [LedgerEntry.from_dict(e) for e in data["entries"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # Never start from zero over a damaged ledger: that would forget spent budget.
        raise ValueError(
            f"privacy ledger {path} is unreadable ({exc}); restore it from a backup "
            "rather than deleting it: deleting it would forget the budget already spent"
        ) from exc


def _plain(entry: LedgerEntry) -> dict[str, Any]:
    data = asdict(entry)
    for key in ("sample_rates", "noise_multipliers", "task_epsilons"):
        data[key] = dict(getattr(entry, key))
    data["data"] = {task: key.to_dict() for task, key in entry.data.items()}
    return data
