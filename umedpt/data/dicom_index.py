"""What the DICOM reader needs of each file's header, kept in the site's state folder.

Listing a DICOM site parses every header (labels by SOPInstanceUID, the split group by
PatientID or study, the number of frames) before the decoded-image cache's key is known, so
without this a cached round of 500 slices spent most of its time in pydicom. The index holds,
per file, its size and mtime and only those facts, each identifier as its keyed pseudonym
(:mod:`umedpt.data.pseudonyms`), never in clear: the file may be read by anyone who can read
the state folder, and the identifier-scan test reads it too. Files are keyed by the keyed
pseudonym of their absolute path, not the path: exports often name folders by PatientID and
files by SOPInstanceUID (a moved data folder only costs one fresh parse). A changed file
(size or mtime), a changed site secret (the pseudonyms would differ) or an unreadable index
means a fresh parse of the headers concerned; the index is written atomically, so a reader
never sees half.

One file per task, ``<state_dir>/dicom-index/<task>.json``; files a load no longer lists are
dropped from it when it is rewritten.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from umedpt.data.pseudonyms import Pseudonymizer

logger = logging.getLogger(__name__)

INDEX_FORMAT = 2  # bump when HeaderFacts or the keys change: every old index is rebuilt
FOLDER = "dicom-index"
PSEUDONYM_KINDS = ("patient", "study", "sop")  # PatientID, StudyInstanceUID, SOPInstanceUID


@dataclass(frozen=True)
class HeaderFacts:
    """One file's header as the reader uses it; ``error`` set: not a readable DICOM file."""

    frames: int = 1
    patient: str = ""  # pseudonym of PatientID ("" when the file has none)
    study: str = ""  # pseudonym of StudyInstanceUID
    sop: str = ""  # pseudonym of SOPInstanceUID (labels CSVs keyed by UID)
    error: str = ""  # the DataError's problem (names no header value)

    def pseudonym(self, kind: str) -> str:
        return {"patient": self.patient, "study": self.study, "sop": self.sop}[kind]


# Parses one header: its facts, or raises DataError (the caller records the problem).
ParseFn = Callable[[Path], HeaderFacts]


class HeaderIndex:
    """The index of one task: :meth:`facts` per file, then :meth:`save` once per load."""

    def __init__(self, state_dir: Path, task_name: str, pseudonyms: Pseudonymizer) -> None:
        self.file = Path(state_dir) / FOLDER / f"{task_name}.json"
        # a keyed digest, not the secret: another secret means other pseudonyms, a rebuild
        self._check = pseudonyms.key("index", "header-index")
        self._pseudonyms = pseudonyms
        self._old = self._load()
        self._new: dict[str, list[Any]] = {}
        self.parsed = 0  # headers parsed in this load (the rest came from the index)

    def facts(self, path: Path, parse: ParseFn) -> HeaderFacts:
        """``path``'s facts from the index if unchanged, else from ``parse`` (and kept).

        A DataError of ``parse`` for a file that exists is kept as ``error``; a missing file
        raises (nothing to key it by).
        """
        from umedpt.errors import DataError

        key = self._pseudonyms.key("path", str(path))  # never the path: it may hold UIDs
        try:
            stat = path.stat()
        except OSError:
            return parse(path)  # raises the reader's "file not found"
        stamp = [stat.st_size, stat.st_mtime_ns]
        entry = self._old.get(key)
        if entry is not None and entry[0] == stamp[0] and entry[1] == stamp[1]:
            with contextlib.suppress(TypeError, ValueError):
                facts = HeaderFacts(**entry[2])
                self._new[key] = entry
                return facts
        try:
            facts = parse(path)
        except DataError as exc:
            facts = HeaderFacts(error=exc.problem)
        self.parsed += 1
        self._new[key] = [*stamp, {k: v for k, v in asdict(facts).items() if v not in ("", 1)}]
        return facts

    def save(self) -> None:
        """Write the files of this load, if anything changed; a failure only costs speed."""
        if self._new == self._old:
            return
        document = {"format": INDEX_FORMAT, "check": self._check, "files": self._new}
        temp = self.file.parent / f".{self.file.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            self.file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle, separators=(",", ":"))
            os.replace(temp, self.file)
        except OSError as exc:
            logger.warning("cannot write the DICOM header index %s (%s)", self.file, exc)
        finally:
            temp.unlink(missing_ok=True)

    def _load(self) -> dict[str, list[Any]]:
        if not self.file.is_file():
            return {}
        try:
            document = json.loads(self.file.read_text(encoding="utf-8"))
            files = document["files"]
            if not isinstance(files, dict) or document.get("format") != INDEX_FORMAT:
                raise ValueError("another format")
            if document.get("check") != self._check:
                logger.info(
                    "DICOM header index %s was made under another site secret; rebuilding it",
                    self.file,
                )
                return {}
            return {
                k: v
                for k, v in files.items()
                if isinstance(v, list) and len(v) == 3 and isinstance(v[2], dict)
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # JSON errors say where, never what: no header value reaches the log
            logger.warning(
                "DICOM header index %s is unreadable (%s); rebuilding it from the files",
                self.file,
                type(exc).__name__,
            )
            return {}
