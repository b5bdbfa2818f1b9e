"""Supervising Flower's own processes (SuperLink, SuperNode, `flwr run`).

Every process a command starts dies with it, however the command dies:

- each child runs in a session of its own, so it and everything it spawns (SuperExec,
  ServerApp/ClientApp processes) can be stopped together by ``stop``;
- each child asks the kernel for SIGTERM when its parent dies (Linux's parent-death
  signal), so a ``kill -9`` of the command does not leave it running; Flower's own
  grandchildren follow their parent with ``--parent-pid``, which Flower passes itself;
- SIGTERM and Ctrl-C of the command become :class:`Interrupted`, so ``finally`` blocks
  stop the children and the command can say what was interrupted.

Flower's executables are taken from beside the running interpreter (a virtualenv's
``bin/``), so a command started by its full path, as systemd does, finds them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class FlowerProcessError(RuntimeError):
    """A Flower process failed to start or exited early; the message says which and why."""


class Interrupted(BaseException):
    """The command was asked to stop (SIGTERM or Ctrl-C); ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into :class:`Interrupted` while the block runs."""

    def handler(signum: int, frame: object) -> None:
        # Once is enough: a second signal must not cut short the cleanup that follows.
        for other in previous:
            signal.signal(other, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def flower_tool(name: str) -> str:
    """The path of Flower's executable ``name``: where this Python installs scripts
    (a virtualenv's ``bin/``), beside the interpreter, the user scheme, else on PATH."""
    folders = [sysconfig.get_path("scripts"), str(Path(sys.executable).parent)]
    with contextlib.suppress(KeyError):  # `pip install --user`
        folders.append(sysconfig.get_path("scripts", f"{os.name}_user"))
    for folder in folders:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    if found := shutil.which(name):
        return found
    raise FlowerProcessError(
        f"'{name}' was found neither beside {sys.executable} nor on PATH: "
        "is Flower installed in this environment?"
    )


def _die_with(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGTERM when ``parent`` dies (Linux only)."""

    def setup() -> None:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # the parent died before the line above
                os._exit(1)

    return setup


# A few lines of Python, in a session of their own, that outlive us: once our process is
# gone (its parent changes, even after kill -9) they SIGKILL the child's whole process group,
# i.e. every process Flower started under it (it starts its app processes with plain Popen).
# PDEATHSIG reaches the child alone; an app process Flower was still starting would
# otherwise be left to Flower's own parent monitor, which can hang in its graceful exit.
_REAPER = """
import os, signal, sys, time
group, parent = int(sys.argv[1]), int(sys.argv[2])
while True:
    time.sleep(0.2)
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        sys.exit(0)
    if os.getppid() != parent:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
        sys.exit(0)
"""


def _start_reaper(group: int, env: dict[str, str]) -> None:
    subprocess.Popen(
        [sys.executable, "-c", _REAPER, str(group), str(os.getpid())],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def start(
    command: Sequence[str],
    *,
    env: dict[str, str],
    log_file: Path | None = None,
    stdout: int | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen:
    """Start ``command`` in its own session, tied to our life; output to ``log_file``."""
    with contextlib.ExitStack() as files:
        if stdout is not None:
            output: int | BinaryIO = stdout
        elif log_file is not None:
            output = files.enter_context(open(log_file, "ab"))  # the child keeps its copy
        else:
            output = subprocess.DEVNULL
        child = subprocess.Popen(
            list(command),
            env=env,
            cwd=cwd,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with(os.getpid()),  # noqa: PLW1509 - no threads start children here
        )
    _start_reaper(child.pid, env)  # the child leads its own session: its pid is the group
    return child


def stop(process: subprocess.Popen, *, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # stragglers of the same group
    process.wait()


def log_tail(log_file: Path | None, lines: int = 20) -> str:
    if not log_file or not log_file.is_file():
        return ""
    return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])


def wait_healthy(
    process: subprocess.Popen,
    url: str,
    *,
    timeout: float,
    what: str,
    log_file: Path | None,
    ca_file: Path | None = None,
) -> None:
    """Wait until ``url`` answers, verifying TLS against ``ca_file`` (our own CA).

    The certificate chain is checked against the CA the process was given, not the
    system's store (a federation's CA is private). The host name is not checked: we
    connect over loopback to a process we started, whatever names its certificate has.
    """
    context = None
    if ca_file is not None:
        context = ssl.create_default_context(cafile=str(ca_file))
        context.check_hostname = False
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FlowerProcessError(
                f"{what} exited with code {process.returncode}:\n{log_tail(log_file)}"
            )
        try:
            urllib.request.urlopen(url, timeout=2, context=context)  # noqa: S310 - loopback
            return
        except OSError as exc:  # urllib wraps TLS errors in URLError, an OSError
            last_error = f"; {exc}"
            time.sleep(0.3)
    raise FlowerProcessError(
        f"{what} did not become healthy at {url} within {timeout:.0f} s{last_error}"
    )


def _socket_inodes(port: int) -> set[str]:
    """Inodes of sockets listening on ``port`` (any address), from /proc/net/tcp{,6}."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(inode)
    return inodes


def listening_pids(port: int, *, among: Iterable[int] | None = None) -> dict[int, str]:
    """{pid: command line} of the processes listening on TCP ``port`` that we can see.

    ``among``: look at these PIDs only, not at every process (a test knows its own).
    """
    inodes = _socket_inodes(port)
    owners: dict[int, str] = {}
    if not inodes:
        return owners
    proc = Path("/proc")
    entries = proc.iterdir() if among is None else (proc / str(pid) for pid in among)
    for entry in entries:
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    owners[int(entry.name)] = _program((entry / "cmdline").read_bytes())
                    break
    return owners


def _program(cmdline: bytes) -> str:
    """'flower-superlink --host ...' from a /proc cmdline (the interpreter left out)."""
    argv = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
    if argv and Path(argv[0]).name.startswith("python") and len(argv) > 1:
        argv = argv[1:]
    if not argv:
        return "?"
    return " ".join([Path(argv[0]).name, *argv[1:4]])


def port_is_listening(port: int) -> bool:
    return bool(_socket_inodes(port))


# Flower prints "Exit Code: N" before it exits with status 1; N says why (Flower 1.42.0,
# flwr/supercore/exit/exit.py). Our own words for the codes a site operator meets; the
# rest use Flower's short help text.
_EXIT_CODE = re.compile(r"Exit Code: (\d+)")
_PLAIN_WORDS = {
    302: "this site's authentication key is not valid",
    305: (
        "could not connect to the coordinator: check the address and port, that the "
        "coordinator is running, and that both sides agree on TLS (the right CA "
        "certificate with --root-certificates, or --insecure on both sides)"
    ),
    600: "the coordinator address is not HOST:PORT",
    602: "TLS is not available here: use --insecure only on a trusted test network",
    604: "a certificate or key path is wrong",
    605: "the TLS certificates are incomplete or invalid",
}


# What the SuperLink answers a SuperNode it refuses, as Flower prints it (flwr 1.42.0,
# flwr/supercore/error/base.py: FLEET_SUPERNODE_REGISTRATION_DISABLED = 2001,
# FLEET_NODE_ACTIVATION_FAILED = 2004).
_FLEET_REFUSALS = {
    "[code: 2001]": (
        "the coordinator accepts registered sites only: make a key pair with `umedpt-fl "
        "certs site`, have the coordinator register SITE.pub (`umedpt-fl sites register`), "
        "and start this site with --auth-key SITE.key"
    ),
    "[code: 2004]": (
        "the coordinator does not know this site's key (never registered, or revoked): "
        "send SITE.pub to the coordinator to register with `umedpt-fl sites register`"
    ),
}


def flower_exit_reason(log_text: str) -> str | None:
    """Flower's exit code found in a process's output, in plain words; None if absent."""
    codes = _EXIT_CODE.findall(log_text)
    if not codes:
        return None
    code = int(codes[-1])
    for marker, reason in _FLEET_REFUSALS.items():  # the SuperLink said why (Flower 1.42.0)
        if code == 305 and marker in log_text:
            return f"{reason} (Flower exit code 305, {marker.strip('[]')})"
    if code == 305 and "CERTIFICATE_VERIFY_FAILED" in log_text:
        return (
            "the coordinator's certificate was not accepted: it is not signed by the CA given "
            "with --root-certificates, or it does not name the address in --server "
            "(Flower exit code 305)"
        )
    if code in _PLAIN_WORDS:
        return f"{_PLAIN_WORDS[code]} (Flower exit code {code})"
    try:  # Flower 1.42.0 keeps its help texts here
        from flwr.supercore.exit.exit_code import EXIT_CODE_HELP

        help_text = EXIT_CODE_HELP.get(code, "")
    except ImportError:
        help_text = ""
    return f"Flower exit code {code}" + (f": {help_text}" if help_text else "")


# -- Flower's app processes follow the command that started the federation --------------
# A ServerApp or ClientApp process is a grandchild of our command (SuperLink or SuperNode,
# then SuperExec): the parent-death signal does not reach it, and Flower's own parent
# monitor asks it to exit gracefully, which can hang while it tries to reach a SuperLink
# that is gone. So our app code watches the command itself and leaves at once.
SUPERVISOR_ENV = "UMEDPT_FL_SUPERVISOR"  # "<pid>:<start time>" of the supervising command
SUPERVISOR_GONE_EXIT_CODE = 75
_WATCH_THREAD = "umedpt-fl-supervisor-watch"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a reused PID apart); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5)


def supervisor_env() -> dict[str, str]:
    """Environment entries naming this process as the supervisor of its Flower children."""
    pid = os.getpid()
    return {SUPERVISOR_ENV: f"{pid}:{_start_time(pid) or ''}"}


def follow_supervisor(*, poll: float = 0.5, sleep: Callable[[float], object] = time.sleep) -> bool:
    """In an app process: exit at once when the supervising command is gone.

    A no-op (returns False) where no supervisor is named, e.g. in a simulation. The watch
    checks every ``poll`` seconds of ``sleep`` (a test passes one that waits for its word).
    """
    value = os.environ.get(SUPERVISOR_ENV, "")
    if ":" not in value or any(t.name == _WATCH_THREAD for t in threading.enumerate()):
        return False
    pid_text, started = value.split(":", 1)
    pid = int(pid_text)

    def watch() -> None:
        while True:
            sleep(poll)
            current = _start_time(pid)
            if current is None or (started and current != started):
                os._exit(SUPERVISOR_GONE_EXIT_CODE)  # no cleanup: it could write stale state

    threading.Thread(target=watch, name=_WATCH_THREAD, daemon=True).start()
    return True
