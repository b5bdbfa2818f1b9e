"""Which data a task's privacy spend is charged to: its source and a content fingerprint.

The ledger keys every task's spend by the data it trained on, not by the task's name: a
renamed task keeps its spend, and two tasks that read the same files share one budget.
A task's :class:`DataKey` is

- ``source``: the task's ``path`` as the site file resolves it (a file or a folder), and
- ``fingerprint``: ``sha256:`` + the SHA-256 over every file the task's reader lists (the
  ``path`` itself when it is a file, and each record's decoded files: images, masks), each
  named by its path relative to ``path`` (a lone file by no name) and hashed by content.

Two keys are the same data when their fingerprints are equal (a copy of the data under
another path) **or** their sources overlap (the same path, or one inside the other): files
added to, changed in or removed from a task's folder do not give it a fresh budget, and a
copy elsewhere does not either. Both rules err towards sharing a budget (conservative).

Hashing the content costs one read of the data; it is done once per file: the digests are
kept in ``<state_dir>/privacy-fingerprints.json`` by path, size and modification time
(a file whose size and mtime did not change is not read again). That file only saves time;
a missing or damaged one is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from umedpt.config import TaskConfig

FINGERPRINTS_FILE = "privacy-fingerprints.json"  # in the site's state folder: a cache
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataKey:
    """The data a task trains on: its resolved source path and a content fingerprint."""

    source: str
    fingerprint: str

    def same_data(self, other: DataKey) -> bool:
        """Whether a spend charged to ``other`` is a spend on this key's data too."""
        if self.fingerprint and self.fingerprint == other.fingerprint:
            return True
        mine, theirs = Path(self.source), Path(other.source)
        return mine == theirs or mine.is_relative_to(theirs) or theirs.is_relative_to(mine)

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataKey:
        return cls(source=str(data["source"]), fingerprint=str(data["fingerprint"]))


def data_key(task: TaskConfig, *, digests_file: Path | None = None) -> DataKey:
    """``task``'s data key; ``digests_file`` keeps file digests between processes."""
    # Local import: the readers are built on umedpt.config, which this package uses too.
    from umedpt.data.readers import read_records

    files = {task.path} if task.path.is_file() else set()
    for record in read_records(task):
        files.update(Path(f) for f in record.files())
    return DataKey(str(task.path), fingerprint(task.path, files, digests_file=digests_file))


def fingerprint(root: Path, files: Iterable[Path], *, digests_file: Path | None = None) -> str:
    """``sha256:`` + the digest over ``files`` (named relative to ``root``) and their content."""
    memo = _Digests(digests_file)
    lines = []
    for file in files:
        if file == root:
            name = ""
        elif file.is_relative_to(root):
            name = file.relative_to(root).as_posix()
        else:
            name = str(file)
        lines.append(f"{name}\0{memo.digest(file)}\n")
    memo.save()
    total = hashlib.sha256()
    for line in sorted(lines):
        total.update(line.encode())
    return f"sha256:{total.hexdigest()}"


class _Digests:
    """File digests by path, size and mtime: a file is read once while it does not change."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.known: dict[str, list[Any]] = {}
        self.changed = False
        if path is not None:
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(loaded, dict):
                    self.known = loaded

    def digest(self, file: Path) -> str:
        try:
            stat = file.stat()
        except OSError:
            return "missing"
        signature = [stat.st_size, stat.st_mtime_ns]
        known = self.known.get(str(file))
        if isinstance(known, list) and len(known) == 3 and known[:2] == signature:
            return str(known[2])
        sha = hashlib.sha256()
        with open(file, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                sha.update(chunk)
        self.known[str(file)] = [*signature, sha.hexdigest()]
        self.changed = True
        return sha.hexdigest()

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(OSError):  # a cache: failing to keep it costs only time
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.known), encoding="utf-8")
            os.replace(tmp, self.path)
