"""The run-state file: what the dashboard reads, written by the server after every round.

``<out>/run-state.json`` is the run's report (the same sections as report.json: the
settings as published, the sites' self-descriptions, every round's record, the privacy
summaries) plus what only a live view needs: the round that is running and since when,
the run's first start and its resumptions. It is replaced atomically (a temporary file
renamed over it), so a reader sees the old state or the new one, never half of one.
``format`` changes whenever a key the page reads changes meaning; a reader refuses
another format rather than showing wrong numbers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STATE_FILE = "run-state.json"
STATE_FORMAT = 1
# What a run folder of an older umedpt-fl holds without a run-state file.
OLDER_RUN_MARKERS = ("report.json", "server-state")


class RunFolderError(ValueError):
    """The folder is not a run the dashboard can show; the message says why and what to do."""


def write_state(out_dir: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (with ``format``) to ``<out_dir>/run-state.json`` atomically.

    The temporary file is named by process, so two writers never share one; ``os.replace``
    is atomic on one file system, which the temporary file and the target share.
    """
    path = Path(out_dir) / STATE_FILE
    tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**state, "format": STATE_FORMAT}, indent=1, default=str))
    os.replace(tmp, path)
    return path


def check_run_folder(out_dir: Path) -> None:
    """Raise RunFolderError unless ``out_dir`` holds a run-state file of this format."""
    read_state(out_dir)


def read_state(out_dir: Path) -> dict[str, Any]:
    """The run's state; RunFolderError for a folder that is not a run, or a run whose state
    file is missing (written before the dashboard existed) or of another format."""
    out_dir = Path(out_dir)
    path = out_dir / STATE_FILE
    if not out_dir.is_dir():
        raise RunFolderError(f"{out_dir}: no such folder; pass the --out folder of a run")
    if not path.is_file():
        if any((out_dir / marker).exists() for marker in OLDER_RUN_MARKERS):
            raise RunFolderError(
                f"{out_dir}: this run was written by an older version of umedpt-fl "
                f"(it has no {STATE_FILE}); read its report.json, or resume it with this "
                "version to write one"
            )
        raise RunFolderError(
            f"{out_dir}: not a run folder (no {STATE_FILE}); pass the --out folder of a "
            "`umedpt-fl server` or `simulate` run"
        )
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"{path}: cannot be read as JSON: {exc}") from exc
    found = state.get("format") if isinstance(state, dict) else None
    if found != STATE_FORMAT:
        older = isinstance(found, int) and found < STATE_FORMAT
        raise RunFolderError(
            f"{path}: format {found!r}, this umedpt-fl reads format {STATE_FORMAT}: the run "
            + ("was written by an older version" if older else "was written by another version")
            + "; view it with the umedpt-fl version that wrote it"
        )
    return state
