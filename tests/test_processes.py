"""Process supervision: tools beside the interpreter, locks, ports, exit reasons, watchdogs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from federation.processes import (
    SUPERVISOR_GONE_EXIT_CODE,
    flower_exit_reason,
    flower_tool,
    listening_pids,
    start,
    stop,
)
from server.lock import FolderLockedError, folder_lock
from tests.processes import Tracked, Watched


def test_flower_tools_are_found_where_this_python_installs_them_without_path(
    monkeypatch,
) -> None:
    monkeypatch.setenv("PATH", "")
    found = Path(flower_tool("flower-superlink"))
    assert found.parent in {Path(sysconfig.get_path("scripts")), Path(sys.executable).parent}


def test_a_locked_folder_names_its_holder_and_frees_when_the_holder_dies(tmp_path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import signal; from pathlib import Path; from server.lock import folder_lock\n"
            f"with folder_lock(Path({str(tmp_path)!r}), 'x.lock', role='test'):\n"
            "    print('held', flush=True); signal.pause()\n"
        )],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match=f"PID {holder.pid}"):
            with folder_lock(tmp_path, "x.lock", role="test"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(tmp_path, "x.lock", role="test", wait=5):  # the kernel dropped it
        assert (tmp_path / "x.lock").read_text().strip() == str(os.getpid())


LISTENER = """
import socket, sys
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    print(sock.getsockname()[1], flush=True)
    sys.stdin.read()
"""


def test_the_process_listening_on_a_port_is_named(tmp_path) -> None:
    (tmp_path / "listener.py").write_text(LISTENER)
    listener = subprocess.Popen(
        [sys.executable, str(tmp_path / "listener.py"), "--role", "test"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        port = int(listener.stdout.readline())
        # Named by its program, the interpreter left out; this process, not listening, is not.
        owners = listening_pids(port, among=[os.getpid(), listener.pid])
        assert owners == {listener.pid: "listener.py --role test"}
        assert listening_pids(port, among=[os.getpid()]) == {}  # looked nowhere else
    finally:
        listener.kill()
        listener.wait()


def test_flower_exit_codes_are_put_in_plain_words() -> None:
    text = "ERROR: SSL/TLS handshake error detected.\nERROR: Exit Code: 305\nmore"
    assert "could not connect to the coordinator" in flower_exit_reason(text)
    assert "Flower exit code 305" in flower_exit_reason(text)
    assert "Flower exit code 606" in flower_exit_reason("Exit Code: 606")
    assert flower_exit_reason("all fine") is None
    wrong_ca = "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed\nExit Code: 305"
    assert "certificate was not accepted" in flower_exit_reason(wrong_ca)


SUPERVISOR = """
import json, signal
from federation.processes import supervisor_env
print(json.dumps(supervisor_env()), flush=True)
signal.pause()
"""
APP = """
import os, signal, sys
from federation.processes import follow_supervisor

def sleep(seconds):  # each check of the supervisor waits for the test's word
    print("waiting", flush=True)
    if not sys.stdin.readline():
        os._exit(1)

assert follow_supervisor(poll=60, sleep=sleep)
signal.pause()
"""
PARENT = """
import os, signal, sys
from federation.processes import start
child = start([sys.executable, "-c", "import signal; signal.pause()"], env=dict(os.environ))
print(child.pid, flush=True)
signal.pause()
"""


def script(folder: Path, name: str, text: str) -> str:
    (folder / name).write_text(text)
    return str(folder / name)


def test_an_app_process_exits_when_its_supervisor_dies(tmp_path) -> None:
    supervisor = subprocess.Popen(
        [sys.executable, script(tmp_path, "supervisor.py", SUPERVISOR)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    app = subprocess.Popen(
        [sys.executable, script(tmp_path, "app.py", APP)],
        env={**os.environ, **json.loads(supervisor.stdout.readline())},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def check() -> None:  # let the app's watch check its supervisor once
            app.stdin.write("\n")
            app.stdin.flush()

        assert app.stdout.readline() == "waiting\n"
        check()  # the supervisor runs: the app carries on, to the next check
        assert app.stdout.readline() == "waiting\n"
        supervisor.kill()
        supervisor.wait()
        check()
        assert app.wait(timeout=20) == SUPERVISOR_GONE_EXIT_CODE
    finally:
        for process in (supervisor, app):
            process.kill()
            process.wait()


def test_children_die_with_their_parent(tmp_path) -> None:
    parent = Tracked(
        [sys.executable, script(tmp_path, "parent.py", PARENT)], stdout=subprocess.PIPE
    )
    with Watched(int(parent.stdout.readline())) as child:
        assert not child.exited()
        parent.send_signal(signal.SIGKILL)
        assert parent.wait(10) == -signal.SIGKILL
        assert child.exited(within=10), "the child outlived its killed parent"
    assert parent.all_gone(within=10), "a process the parent started (the reaper?) outlived it"


GROUP = """
import signal, subprocess, sys
grandchild = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
print(grandchild.pid, flush=True)
signal.pause()
"""


def test_stop_ends_the_whole_process_group(tmp_path) -> None:
    command = [sys.executable, script(tmp_path, "group.py", GROUP)]
    process = start(command, env=dict(os.environ), stdout=subprocess.PIPE)
    with Watched(int(process.stdout.readline())) as grandchild:
        stop(process, grace=2)
        assert process.returncode == -signal.SIGTERM  # it was asked first
        assert grandchild.exited(within=5), "stop() left a process of the group running"


ORPHAN = """
import subprocess, sys
orphan = subprocess.Popen(
    [sys.executable, "-c", "import signal; signal.pause()"], start_new_session=True
)
print(orphan.pid, flush=True)
"""  # exits at once, leaving its child behind in a session of its own


def test_a_tracked_command_is_gone_only_with_everything_it_started(tmp_path) -> None:
    command = [sys.executable, script(tmp_path, "orphan.py", ORPHAN)]
    tracked = Tracked(command, stdout=subprocess.PIPE)
    orphan = int(tracked.stdout.readline())
    try:
        assert tracked.wait(10) == 0
        stat = Path(f"/proc/{orphan}/stat").read_text()
        assert int(stat.rsplit(")", 1)[1].split()[1]) == tracked.keeper.pid  # not init
        assert not tracked.all_gone(within=0)  # the orphan runs on
    finally:
        os.kill(orphan, signal.SIGKILL)
    assert tracked.all_gone(within=10)
