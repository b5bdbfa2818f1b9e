"""Exclusive locks on an output folder: one coordinator, and one ServerApp, per folder.

``flock`` locks belong to the open file: the kernel drops them when the holder dies,
``kill -9`` included, so a stale lock never blocks a restart. The holder's PID is
written into the lock file, so a refusal can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

COORDINATOR_LOCK = ".coordinator.lock"  # held by `umedpt-fl server` for its lifetime
SERVERAPP_LOCK = ".serverapp.lock"  # held by the ServerApp while it writes the folder


class FolderLockedError(RuntimeError):
    """Another process holds the folder; the message names its PID."""

    def __init__(self, folder: Path, pid: str, role: str) -> None:
        self.folder, self.pid = folder, pid
        super().__init__(
            f"{folder} is in use by another {role} (PID {pid or 'unknown'}); stop it, "
            "or choose another --out"
        )


@contextlib.contextmanager
def folder_lock(folder: Path, name: str, *, role: str, wait: float = 0.0) -> Iterator[None]:
    """Hold lock ``name`` in ``folder`` for the block; wait up to ``wait`` s for it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                    raise FolderLockedError(folder, holder, role) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
