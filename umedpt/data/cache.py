"""A site's decoded data on its own disk, so a new process does not decode every image again.

Flower starts a fresh ``flwr-clientapp`` process for every message, so without this a site
would read and decode all its images twice per round. One file per task,
``<cache_dir>/<task>.<key>.safetensors``: the stacked uint8 images and the targets of each
split as tensors, each target field stored by the kind its task type declares
(``TaskType.target_fields``, :mod:`umedpt.data.kinds`), and the rest (sources, original
sizes, skipped samples, dropped parts) as JSON in the file's own metadata header, so one
``os.replace`` publishes tensors and metadata together. Nothing is pickled.

The key (:func:`cache_key`) covers everything the decoded samples depend on: the cache
format, the task's data settings and its type's target fields, the records the reader listed
(annotations, splits, groups: so annotation files are covered by their content) and the size
and mtime of every file whose pixels are decoded (images, and masks: ``Record.files``). Any
change gives another key, and the old file is removed when the new one is written. An
unreadable file is discarded with a warning; the data is then loaded afresh. The cache never
leaves the site: it lives in the site's state folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import PIL
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import umedpt
from umedpt.config import SiteConfig, TaskConfig
from umedpt.data.kinds import Stacked, TargetKind
from umedpt.data.samples import Record, Sample, TaskData
from umedpt.data.targets import Dropped
from umedpt.tasks import get_task_type

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when decoding or this layout changes: every old cache becomes stale
SUFFIX = ".safetensors"
_META_KEY = "umedpt"
_IMAGES = Stacked()  # every image has the task's size
_STALE_TEMP_SECONDS = 3600.0  # a temp file this old belongs to a writer that died


def site_cache_dir(site: SiteConfig) -> Path:
    """Where a site keeps its decoded data: its own state folder, never a shared one."""
    return site.state_dir / "cache"


class CacheError(ValueError):
    """A cache file does not hold what its name and format promise."""


@dataclass
class CachedData:
    """What one load produced: the samples and what the loader warns about."""

    data: TaskData
    dropped: Dropped


def cache_key(
    task: TaskConfig, records: Sequence[Record], skipped: Iterable[tuple[str, str]]
) -> str:
    """A digest of everything the decoded samples of ``task`` depend on.

    ``skipped`` holds the problems the reader already reported (``skip_bad_samples``).
    """
    digest = hashlib.sha256()
    settings = {
        "format": CACHE_FORMAT,
        # decoding changes with the code and the image library, not only with the data
        "umedpt": umedpt.__version__,
        "pillow": PIL.__version__,
        "type": task.type,
        "data_format": task.format,
        "path": str(task.path),
        "classes": list(task.classes),
        "image_size": task.image_size,
        "skip_bad_samples": task.skip_bad_samples,
        "split": asdict(task.split),
        "options": dict(task.options),
        "targets": {name: repr(kind) for name, kind in _target_fields(task).items()},
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for rec in records:
        digest.update(repr(rec).encode())
        digest.update(b"\n")
    digest.update(json.dumps(list(skipped)).encode())
    for path in sorted(_decoded_files(task, records)):
        try:
            stat = path.stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()[:24]


def _decoded_files(task: TaskConfig, records: Sequence[Record]) -> set[Path]:
    files = {task.path} if task.path.is_file() else set()
    for rec in records:
        files.update(rec.files())
    return files


def _target_fields(task: TaskConfig) -> Mapping[str, TargetKind]:
    """The Sample targets of ``task``'s type, by kind: what the file holds besides images."""
    return get_task_type(task.type).target_fields


# What a damaged or foreign file raises while it is read back.
_UNREADABLE = (
    OSError,
    SafetensorError,
    CacheError,
    ValueError,
    LookupError,
    TypeError,
    AttributeError,
)


class TaskCache:
    """The cache file of one task's data under one key."""

    def __init__(self, cache_dir: Path, task: TaskConfig, key: str) -> None:
        self.folder = Path(cache_dir)
        self.task = task
        self.key = key
        self.file = self.folder / f"{task.name}.{key}{SUFFIX}"

    def read(self) -> CachedData | None:
        """The cached data, or None when there is none; an unreadable file is discarded."""
        if not self.file.is_file():
            return None
        try:
            return _read(self.file, self.key, _target_fields(self.task))
        except _UNREADABLE as exc:
            warnings.warn(
                f"task '{self.task.name}': data cache {self.file} is unreadable ({exc}); "
                "it is discarded and the data loaded afresh",
                stacklevel=2,
            )
            with contextlib.suppress(OSError):  # a read-only folder: it is only ignored
                self.file.unlink(missing_ok=True)
            return None

    def write(self, cached: CachedData) -> bool:
        """Publish ``cached`` atomically and remove this task's older files; False on failure.

        A failure (a full or read-only disk) is logged and costs only speed.
        """
        temp = self.folder / f".{self.file.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            tensors, meta = _encode(cached, self.key, _target_fields(self.task))
            # Created 0700 and the file 0600: other accounts never read decoded patient images,
            # not even while the file is being written.
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.folder.chmod(0o700)
            save_file(tensors, str(temp), metadata={_META_KEY: json.dumps(meta)})
            temp.chmod(0o600)  # decoded patient images: readable by the site's account only
            os.replace(temp, self.file)
        except (OSError, SafetensorError, CacheError) as exc:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            logger.warning(
                "task '%s': could not write the data cache %s (%s); the data will be "
                "decoded again next time",
                self.task.name,
                self.file,
                exc,
            )
            return False
        self._remove_old()
        return True

    def _remove_old(self) -> None:
        name = re.escape(self.task.name)
        own = re.compile(rf"^{name}\.[0-9a-f]+{re.escape(SUFFIX)}$")
        temp = re.compile(rf"^\.{name}\.[0-9a-f]+{re.escape(SUFFIX)}\..*\.tmp$")
        now = time.time()
        for path in self.folder.iterdir():
            try:
                if own.match(path.name) and path != self.file:
                    path.unlink()
                elif temp.match(path.name) and now - path.stat().st_mtime > _STALE_TEMP_SECONDS:
                    path.unlink()
            except OSError:
                pass  # another process removed it first


def _encode(
    cached: CachedData, key: str, fields: Mapping[str, TargetKind]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    splits = []
    for split, samples in cached.data.splits.items():
        if samples:
            tensors[f"{split}.image"] = _IMAGES.encode([s.image for s in samples])[""]
        stored: dict[str, list[str]] = {}  # field -> the suffixes of its tensors
        for name in _present_fields(split, samples, fields):
            encoded = fields[name].encode([s.targets[name] for s in samples])
            tensors.update({_tensor_name(split, name, sfx): t for sfx, t in encoded.items()})
            stored[name] = sorted(encoded)
        splits.append(
            {
                "name": split,
                "count": len(samples),
                "targets": stored,
                "sources": [s.source for s in samples],
                "original_sizes": [list(s.original_size) for s in samples],
            }
        )
    meta = {
        "format": CACHE_FORMAT,
        "key": key,
        "splits": splits,
        "skipped": [list(item) for item in cached.data.skipped],
        "dropped": {"counts": cached.dropped.counts, "files": cached.dropped.files},
    }
    return tensors, meta


def _tensor_name(split: str, field: str, suffix: str) -> str:
    return f"{split}.targets.{field}" + (f".{suffix}" if suffix else "")


def _present_fields(
    split: str, samples: Sequence[Sample], fields: Mapping[str, TargetKind]
) -> list[str]:
    """The declared fields set on the samples; each must be set on all of them or on none."""
    for sample in samples:
        undeclared = set(sample.targets) - set(fields)
        if undeclared:
            raise CacheError(
                f"split '{split}': {sample.source} has targets {sorted(undeclared)} "
                "that its task type does not declare"
            )
    present = []
    for name in fields:
        count = sum(name in s.targets for s in samples)
        if count and count != len(samples):
            raise CacheError(f"split '{split}': '{name}' is set on only some samples")
        if count:
            present.append(name)
    return present


def _read(file: Path, key: str, fields: Mapping[str, TargetKind]) -> CachedData:
    with safe_open(str(file), framework="pt") as handle:
        meta = json.loads((handle.metadata() or {})[_META_KEY])
        if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
            raise CacheError("written by another cache format or for another key")
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    splits = {entry["name"]: _samples(entry, tensors, fields) for entry in meta["splits"]}
    skipped = [(str(src), str(why)) for src, why in meta["skipped"]]
    dropped = Dropped(counts=dict(meta["dropped"]["counts"]), files=dict(meta["dropped"]["files"]))
    return CachedData(TaskData(splits=splits, skipped=skipped), dropped)


def _samples(
    entry: dict[str, Any], tensors: dict[str, torch.Tensor], fields: Mapping[str, TargetKind]
) -> list[Sample]:
    split, count = entry["name"], int(entry["count"])
    if len(entry["sources"]) != count or len(entry["original_sizes"]) != count:
        raise CacheError(f"split '{split}': {count} samples but other counts of sources/sizes")
    if not count:
        return []
    images = _IMAGES.decode({"": tensors[f"{split}.image"]}, count)
    columns: dict[str, list[Any]] = {}
    for name, suffixes in entry["targets"].items():
        if name not in fields:
            raise CacheError(f"split '{split}': '{name}' is not a target of this task type")
        stored = {sfx: tensors[_tensor_name(split, name, sfx)] for sfx in suffixes}
        try:
            columns[name] = fields[name].decode(stored, count)
        except ValueError as exc:
            raise CacheError(f"split '{split}': target '{name}': {exc}") from exc
    return [
        Sample(
            image=images[i],
            source=entry["sources"][i],
            targets={name: values[i] for name, values in columns.items()},
            original_size=(int(entry["original_sizes"][i][0]), int(entry["original_sizes"][i][1])),
        )
        for i in range(count)
    ]
