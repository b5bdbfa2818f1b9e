"""Real processes on loopback: `umedpt-fl server` and `umedpt-fl client`, as operators run them.

Each command runs in a session of its own under a keeper (:class:`tests.processes.Tracked`)
that adopts whatever the command leaves behind, so a test checks exactly the processes it
started, and looks at no other process on the machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from federation.processes import flower_tool
from tests.processes import Tracked


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


BLAS_SETTINGS = ("OPENBLAS_", "NVPL_", "MKL_", "OMP_")


def operator_env(home: Path) -> dict[str, str]:
    """The environment of a service under systemd (the shipped units): a bare PATH with no
    virtualenv on it, as with `env -i PATH=/usr/bin:/bin`. Flower's processes must still
    find each other (they start one another by name)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    # this machine's own BLAS settings (some processors need the BLAS told its core type):
    # they choose the kernels, so without them the processes would not compute bit for bit
    # what the in-process reference computes
    env.update({k: v for k, v in os.environ.items() if k.startswith(BLAS_SETTINGS)})
    if "PYTHONPATH" in os.environ:  # a test run from a copy of the tree imports that copy
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


class Command:
    """One `umedpt-fl` command in its own session, output in ``log``, tracked; with the
    test's environment, or ``env`` (e.g. :func:`operator_env`)."""

    def __init__(self, *args: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with log.open("ab") as output:
            self.process = Tracked(
                [sys.executable, "-m", "umedpt_fl.cli", *args],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def leaves_nothing(self, within: float = 20.0) -> bool:
        """True once the command and every process it started have exited."""
        return self.process.all_gone(within)

    def stop(self) -> None:
        """SIGTERM the command's whole session, then SIGKILL what is left (test cleanup)."""
        for signum, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            if self.process.poll() is not None:
                break
            try:
                os.killpg(self.process.pid, signum)
                self.process.wait(grace)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass


def server(out: Path, port: int, *extra: str, log: Path, env=None) -> Command:
    return Command(
        "server", "--out", str(out), "--host", "127.0.0.1", "--port", str(port),
        "--node-wait-timeout", "240", *extra, log=log, env=env,
    )  # fmt: skip


def client(site: Path, port: int, *extra: str, log: Path, env=None) -> Command:
    return Command(
        "client", "--site", str(site), "--server", f"127.0.0.1:{port}",
        "--port", str(free_port()), "--skip-check", *extra, log=log, env=env,
    )  # fmt: skip


def completed_round(out: Path) -> int:
    try:
        return json.loads((out / "server-state" / "progress.json").read_text())["completed_round"]
    except (OSError, ValueError, KeyError):
        return 0


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.1)


def logs(commands: list[Command], chars: int = 2500) -> str:
    """The end of every command's output, for an assertion message."""
    return "\n".join(f"--- {c.log.name}\n{c.output()[-chars:]}" for c in commands)


def stop_all(commands: list[Command]) -> None:
    for command in commands:
        command.stop()


def assert_nothing_left(commands: list[Command]) -> None:
    """No process of any of ``commands`` is still running (each checked by its keeper)."""
    for command in commands:
        assert command.leaves_nothing(), command.log.name


def outsider_lists_runs(tmp_path: Path, port: int, ca: Path) -> subprocess.CompletedProcess:
    """`flwr ls` through the public port, as anyone who trusts our CA could try it."""
    home = tmp_path / "outsider-home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "public"\n[superlink.public]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{ca}"\n'
    )
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0"}
    return subprocess.run(
        [flower_tool("flwr"), "ls", "public"], env=env, capture_output=True, text=True, timeout=60
    )
