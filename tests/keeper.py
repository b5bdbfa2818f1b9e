"""Keeps one command a test runs: starts it, adopts what it leaves behind, exits after the last.

Run by :mod:`tests.processes` as ``python keeper.py REPORT_FD COMMAND...`` (standard library
only: it is started by path, not imported). The keeper is a child subreaper (Linux's
``PR_SET_CHILD_SUBREAPER``): a process below it whose parent dies is reparented to the
keeper instead of init, whatever session it started, and the keeper reaps it as init
would. So the keeper has children exactly while some process the command started is
running, and it exits once the last one has: waiting for the keeper is waiting for all of
them, without looking at any other process on the machine.

On ``REPORT_FD`` it writes the command's PID, then, when the command exits, its exit code
(negative: the signal that ended it), one line each. The command leads a session of its
own and gets SIGTERM if the keeper dies; the keeper gets SIGKILL if the test process dies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}): {os.strerror(errno)}")


def main(report: int, command: list[str]) -> None:
    parent = os.getppid()
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the test died before the line above
        sys.exit(1)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    keeper = os.getpid()
    pid = os.fork()
    if pid == 0:  # the command
        try:
            os.close(report)
            os.setsid()
            _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() == keeper:
                os.execvp(command[0], command)
        except BaseException as exc:
            os.write(2, f"keeper: cannot run {command[0]}: {exc}\n".encode())
        finally:
            os._exit(127)
    os.write(report, f"{pid}\n".encode())
    while True:
        try:
            done, status = os.wait()
        except ChildProcessError:  # no child left: everything the command started is gone
            return
        if done == pid:
            os.write(report, f"{os.waitstatus_to_exitcode(status)}\n".encode())


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
