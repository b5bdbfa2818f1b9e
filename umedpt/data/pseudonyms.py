"""Pseudonymous keys for patient and study identifiers, with a secret that never leaves the site.

Records of one patient must land in one split (``Record.group``), but a group holding the raw
``PatientID`` would carry it into memory dumps, logs and the cache key. An unsalted hash is no
better: patient IDs are short and structured (``"PAT-000123"``), so a dictionary of all of
them reverses it in seconds. The key here is HMAC-SHA256 under a 32-byte random secret kept in
the site's own state folder (``<state_dir>/pseudonym.key``, mode 0600): stable across runs and
processes of the site (so its splits and its data cache are), meaningless anywhere else.
Deleting the file gives new keys, hence possibly new splits.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import uuid
from pathlib import Path

KEY_FILE = "pseudonym.key"
_KEY_BYTES = 32
_DIGEST_CHARS = 16  # 64 bits: collisions need ~4e9 patients at one site


class Pseudonymizer:
    """Turns an identifier into a stable, site-local pseudonym (hex), e.g. ``"patient:3fa1..."``."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("a pseudonym secret needs at least 16 bytes")
        self._secret = secret

    def key(self, kind: str, identifier: str) -> str:
        """``kind:digest`` of ``identifier``; ``kind`` separates e.g. patients from studies."""
        mac = hmac.new(self._secret, f"{kind}\0{identifier}".encode(), hashlib.sha256)
        return f"{kind}:{mac.hexdigest()[:_DIGEST_CHARS]}"

    def __repr__(self) -> str:  # never print the secret
        return "Pseudonymizer(<site secret>)"


def site_pseudonymizer(state_dir: Path) -> Pseudonymizer:
    """The site's pseudonymizer; its secret is created on first use (atomically, 0600)."""
    return Pseudonymizer(_site_secret(Path(state_dir)))


def _site_secret(state_dir: Path) -> bytes:
    file = state_dir / KEY_FILE
    if file.is_file():
        return _read_secret(file)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = state_dir / f".{KEY_FILE}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(_KEY_BYTES))
        # link, not replace: two processes starting at once must end with one secret
        with contextlib.suppress(FileExistsError):
            os.link(temp, file)
    finally:
        temp.unlink(missing_ok=True)
    return _read_secret(file)


def _read_secret(file: Path) -> bytes:
    secret = file.read_bytes()
    if len(secret) < 16:
        raise ValueError(
            f"{file}: the site's pseudonym secret is damaged ({len(secret)} bytes); delete it "
            "to make a new one (the splits of DICOM tasks may then change)"
        )
    return secret
