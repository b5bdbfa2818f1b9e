"""Find the processes a test started, and only those: by a tag in their environment.

Every descendant (SuperLink, SuperNode, `flwr run`, Ray's raylet and workers) inherits
the environment of the command a test starts, even where it starts a session of its own,
so a unique variable finds them all without looking at anybody else's processes.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

TAG_VARIABLE = "UMEDPT_FL_TEST_TAG"


def tagged_env(tag: str | None = None) -> tuple[dict[str, str], str]:
    """Our environment plus a fresh tag; returns (env, tag)."""
    tag = tag or uuid.uuid4().hex
    return {**os.environ, TAG_VARIABLE: tag}, tag


def tagged_processes(tag: str) -> dict[int, str]:
    """{pid: command line} of live (non-zombie) processes carrying ``tag``."""
    marker = f"{TAG_VARIABLE}={tag}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found[int(entry.name)] = command.strip()
    return found


def tagged_processes_after(tag: str, seconds: float = 20.0) -> dict[int, str]:
    """Processes still carrying ``tag`` after giving them ``seconds`` to exit."""
    deadline = time.monotonic() + seconds
    while (left := tagged_processes(tag)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left
