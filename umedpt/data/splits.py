"""Train/val/test assignment: keep the data's own split, else split deterministically by seed.

The split must be the same on every run and every machine (a site restarts, a colleague
reproduces a result), so it is derived from SHA-256 of the seed and a key made of the
file's path relative to the dataset root -- never from Python's salted ``hash()`` or
from directory listing order. Records sharing a ``group`` (e.g. one patient) always land
in the same split, so no patient leaks from training into evaluation.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence

from umedpt.config import SPLITS, SplitConfig
from umedpt.data.samples import Record

logger = logging.getLogger(__name__)


def assign_splits(records: Sequence[Record], split_cfg: SplitConfig) -> dict[str, list[Record]]:
    """Records per split ("train", "val", "test"; every key present, input order kept).

    Records that carry a split keep it; the others are split by ``split_cfg``. With at least
    three groups, train and val (when ``val > 0``) and test (when ``test > 0``) get at least one.
    """
    given = [r for r in records if r.split is not None]
    unsplit = [r for r in records if r.split is None]
    chosen = _split_units(unsplit, split_cfg) if unsplit else {}
    root = _root(unsplit)
    out: dict[str, list[Record]] = {s: [] for s in SPLITS}
    for rec in records:
        split = rec.split if rec.split is not None else chosen[_unit_key(rec, root)]
        out[split].append(rec)
    if given and unsplit:
        logger.info("%d records had no split of their own; split them by seed", len(unsplit))
    if len(records) >= 3:
        empty = [s for s in ("train", "val") if not out[s]]
        if empty:
            logger.warning(
                "split(s) %s are empty (%d records in total)", ", ".join(empty), len(records)
            )
    return out


def _root(records: Sequence[Record]) -> str:
    if not records:
        return ""
    return os.path.commonpath([str(r.image.path.parent) for r in records])


def _unit_key(rec: Record, root: str) -> str:
    """What is split: the group, else the image (path relative to the common root)."""
    if rec.group is not None:
        return f"group:{rec.group}"
    rel = os.path.relpath(rec.image.path, root) if root else str(rec.image.path)
    rel = rel.replace(os.sep, "/")
    return (
        f"file:{rel}"
        if rec.image.member is None
        else f"file:{rel}:{rec.image.member}:{rec.image.index}"
    )


def _split_units(records: Sequence[Record], cfg: SplitConfig) -> dict[str, str]:
    root = _root(records)
    sizes: dict[str, int] = {}
    for rec in records:
        key = _unit_key(rec, root)
        sizes[key] = sizes.get(key, 0) + 1
    order = sorted(sizes, key=lambda k: (_score(cfg.seed, k), k))
    n = len(records)
    target = {"test": round(cfg.test * n), "val": round(cfg.val * n)}
    if n >= 3:
        target = {s: max(target[s], 1 if getattr(cfg, s) > 0 else 0) for s in target}
    units: dict[str, list[str]] = {s: [] for s in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)
    for key in order:
        split = next((s for s in ("test", "val") if counts[s] < target[s]), "train")
        units[split].append(key)
        counts[split] += sizes[key]
    _ensure_non_empty(units, cfg)
    return {key: split for split, keys in units.items() for key in keys}


def _ensure_non_empty(units: dict[str, list[str]], cfg: SplitConfig) -> None:
    """Move whole units so that train, then val, then test are non-empty where possible."""
    wanted = ["train"] + [s for s in ("val", "test") if getattr(cfg, s) > 0]
    for split in wanted:
        if units[split]:
            continue
        # donors: splits of lower priority first, and only if they keep at least one unit
        for donor in reversed(wanted):
            if donor != split and len(units[donor]) > 1:
                units[split].append(units[donor].pop())
                break
        else:
            for donor in reversed(wanted[wanted.index(split) + 1 :]):
                if units[donor]:
                    units[split].append(units[donor].pop())
                    break


def _score(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0{key}".encode()).digest()[:8], "big")
