"""Track the processes a test started, and only those, without looking at any other.

A command runs under a keeper (``tests/keeper.py``) that adopts every process the command
leaves behind, whatever session it started (SuperLink, SuperExec, Ray's raylet), and exits
once the last of them has: :meth:`Tracked.all_gone` waits for the keeper. A single process
the test knows by PID is watched through a pidfd (:class:`Watched`).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

KEEPER = Path(__file__).with_name("keeper.py")


class Tracked:
    """A command run under a keeper: its PID, its exit code, and whether all it started is gone.

    The command leads a session of its own (``os.killpg(tracked.pid, ...)`` reaches its
    process group) and gets SIGTERM if the test process dies (more exactly, the thread that
    made this object: the kernel's parent-death signal follows the thread).
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdin: int | IO | None = subprocess.DEVNULL,
        stdout: int | IO | None = None,
        stderr: int | IO | None = None,
    ) -> None:
        self.command = list(command)
        read, write = os.pipe()
        try:
            self.keeper = subprocess.Popen(
                [sys.executable, str(KEEPER), str(write), *self.command],
                env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr,
                pass_fds=(write,), start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(write)
        self._reports: int | None = read
        self._buffer = b""
        self.returncode: int | None = None
        first = self._report(timeout=60)
        if first is None:
            raise RuntimeError(f"the keeper did not start {self.command[0]}")
        self.pid = int(first)
        self.stdout = self.keeper.stdout

    def _report(self, timeout: float) -> str | None:
        """The keeper's next line, or None if none came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if self._reports is None:
                return None
            left = max(0.0, deadline - time.monotonic())
            if not select.select([self._reports], [], [], left)[0]:
                return None
            chunk = os.read(self._reports, 64)
            if not chunk:  # the keeper has exited
                os.close(self._reports)
                self._reports = None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def poll(self) -> int | None:
        """The command's exit code, or None while it runs."""
        if self.returncode is None and (line := self._report(timeout=0)) is not None:
            self.returncode = int(line)
        return self.returncode

    def wait(self, timeout: float) -> int:
        """The command's exit code; ``subprocess.TimeoutExpired`` if it runs on."""
        if self.returncode is None:
            line = self._report(timeout)
            if line is None:
                raise subprocess.TimeoutExpired(self.command, timeout)
            self.returncode = int(line)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        """Signal the command itself (not its process group), while it runs."""
        if self.poll() is None:
            os.kill(self.pid, signum)

    def all_gone(self, within: float = 20.0) -> bool:
        """True once the command and every process it started have exited, waiting at most
        ``within`` seconds."""
        try:
            self.keeper.wait(within)
        except subprocess.TimeoutExpired:
            return False
        self.poll()
        self._report(timeout=0)  # the end of the keeper's reports: closes them
        return True


class Watched:
    """One process the test knows by PID, watched through a pidfd (opened now: a PID reused
    later cannot be mistaken for it). ``ProcessLookupError`` if it is already gone."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd = os.pidfd_open(pid)

    def exited(self, within: float = 0.0) -> bool:
        """True once the process has exited (a zombie counts), waiting at most ``within``."""
        return bool(select.select([self.fd], [], [], within)[0])

    def __enter__(self) -> Watched:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
