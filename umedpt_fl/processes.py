"""Starting and stopping Flower's own processes (SuperLink, SuperNode, `flwr run`).

Every process is started in its own session so that it and everything it spawns
(SuperExec, ServerApp/ClientApp processes) can be stopped together: nothing is left
running after a command returns.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit, so `finally` blocks stop the children we started.

    Our children run in sessions of their own (see ``start``): a SIGTERM to our process
    group does not reach them, so we must pass it on ourselves.
    """

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class FlowerProcessError(RuntimeError):
    """A Flower process failed to start or exited early; the message says which and why."""


def start(
    command: Sequence[str], *, env: dict[str, str], log_file: Path | None = None
) -> subprocess.Popen:
    output = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        list(command), env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(process: subprocess.Popen, *, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # stragglers of the same group
    except ProcessLookupError:
        pass
    process.wait()


def wait_healthy(
    process: subprocess.Popen, url: str, *, timeout: float, what: str, log_file: Path | None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (
                log_file.read_text(errors="replace")[-2000:]
                if log_file and log_file.exists()
                else ""
            )
            raise FlowerProcessError(f"{what} exited with code {process.returncode}:\n{tail}")
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310 - loopback health check
            return
        except OSError:
            time.sleep(0.3)
    raise FlowerProcessError(f"{what} did not become healthy at {url} within {timeout:.0f} s")
