"""A site's local state of one run, on its own disk: one folder per completed round.

``<state_dir>/runs/<run-key>/round-NNNNN/`` holds what never leaves the site after round
``NNNNN`` (its heads, its blocks when the run keeps them home) with the trainer's
optimizer, schedule and data-order state; the newest ``KEEP_ROUNDS`` are kept. A SuperNode
restart (which loses Flower's in-memory ``context.state``) resumes from them, and a round
that is repeated after a server restart starts from exactly the same local state.
``latest-heads/`` beside them is the newest heads, where a site operator finds them.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client.errors import SiteError
from federation.settings import RunSettings
from umedpt import contract
from umedpt.checkpoint import load_trainer_state, load_weights, read_header, save_checkpoint
from umedpt.config import SiteConfig
from umedpt.model import UMedPTModel
from umedpt.training.trainer import MultiTaskTrainer

ROUND_DIR = re.compile(r"^round-(\d+)$")
KEEP_ROUNDS = 2
LATEST_HEADS = "latest-heads"
RUN_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")


def site_state_dir(site: SiteConfig, settings: RunSettings) -> Path:
    """The folder of this run's local state: ``<state root>/runs/<run key>``."""
    run_key = settings.run_key or "default"
    if not RUN_KEY.match(run_key):  # it names a folder: no '..', no '/'
        raise SiteError(
            f"site {site.name}: the server sent run key {run_key!r}; expected 1-64 letters, "
            "digits, '-' or '_'"
        )
    root = Path(settings.state_root) / site.name if settings.state_root else site.state_dir
    return root / "runs" / run_key


@dataclass(frozen=True)
class Restored:
    """What :meth:`RoundFolders.restore` loaded: the round it was saved after, and which
    parts ("heads", "blocks", "optimizer state")."""

    server_round: int
    parts: list[str]

    def describe(self) -> str:
        """The parts in words: "heads, blocks and optimizer state"."""
        if len(self.parts) == 1:
            return self.parts[0]
        return ", ".join(self.parts[:-1]) + " and " + self.parts[-1]


class RoundFolders:
    """The saved rounds of one run under ``state_dir``."""

    def __init__(self, state_dir: Path, *, keep: int = KEEP_ROUNDS) -> None:
        self.state_dir = state_dir
        self.keep = keep

    def saved(self) -> dict[int, Path]:
        """Round -> its folder, for every round saved."""
        if not self.state_dir.is_dir():
            return {}
        found = {}
        for path in self.state_dir.iterdir():
            if (match := ROUND_DIR.match(path.name)) and path.is_dir():
                found[int(match.group(1))] = path
        return found

    def restore(
        self,
        before_round: int,
        model: UMedPTModel,
        trainer: MultiTaskTrainer,
        groups: Sequence[str],
    ) -> Restored | None:
        """Load ``groups`` and the trainer's state from the newest round < ``before_round``
        (None if there is none)."""
        saved = {r: p for r, p in self.saved().items() if r < before_round}
        if not saved:
            return None
        latest = max(saved)
        folder = saved[latest]
        # The local groups this round saved (a round saved while blocks were shared, before
        # an upgrade, holds heads only: the blocks then come from the server's weights).
        saved_groups = set(read_header(folder)["groups"])
        loaded = [g for g in groups if g in saved_groups]
        load_weights(model, folder, groups=loaded)
        parts = ["heads"] + (
            ["blocks"] if any(g.startswith(contract.BLOCKS) for g in loaded) else []
        )
        if (state := load_trainer_state(folder)) is not None:
            trainer.load_state_dict(state)
            parts.append("optimizer state")
        return Restored(latest, parts)

    def save(
        self,
        server_round: int,
        model: UMedPTModel,
        *,
        groups: Sequence[str],
        trainer_state: Mapping[str, Any],
        meta: Mapping[str, Any],
    ) -> None:
        """Save round ``server_round``'s ``groups`` and trainer state, refresh
        ``latest-heads`` and drop all but the newest ``keep`` rounds."""
        save_checkpoint(
            self.state_dir / f"round-{server_round:05d}",
            model,
            meta=meta,
            trainer_state=trainer_state,
            groups=groups,
        )
        # The latest heads, where a site operator (and `simulate`) finds them.
        save_checkpoint(self.state_dir / LATEST_HEADS, model, meta=meta, groups=groups)
        saved = self.saved()
        for old in sorted(saved)[: -self.keep]:
            shutil.rmtree(saved[old], ignore_errors=True)


RESIDUAL_FILE = "residual.npz"  # error feedback of a lossy codec (federation.codecs.feedback)


def save_residual(folders: RoundFolders, server_round: int, residual: Mapping[str, Any]) -> Path:
    """Keep what encoding dropped from round ``server_round``'s change in that round's folder
    (saved by :meth:`RoundFolders.save` before the reply is encoded)."""
    path = folders.state_dir / f"round-{server_round:05d}" / RESIDUAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")  # a crash mid-write leaves the old file whole
    with tmp.open("wb") as fh:
        np.savez(fh, **{k: np.asarray(v) for k, v in residual.items()})
    tmp.replace(path)
    return path


def load_residual(folders: RoundFolders, before_round: int) -> tuple[int, dict[str, Any]] | None:
    """The residual of the newest saved round < ``before_round`` (the round whose local
    state the site restored), with that round; None when that round kept none (it sent
    plain or masked weights, or it is not there: a new run, a server that went back)."""
    saved = {r: p for r, p in folders.saved().items() if r < before_round}
    if not saved:
        return None
    latest = max(saved)
    path = saved[latest] / RESIDUAL_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return latest, {k: data[k] for k in data.files}
