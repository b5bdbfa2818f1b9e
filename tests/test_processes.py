"""Process supervision: tools beside the interpreter, locks, ports, exit reasons, watchdogs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from federation.processes import (
    SUPERVISOR_ENV,
    SUPERVISOR_GONE_EXIT_CODE,
    flower_exit_reason,
    flower_tool,
    listening_pids,
    start,
    stop,
    supervisor_env,
)
from server.lock import FolderLockedError, folder_lock


def test_flower_tools_are_found_where_this_python_installs_them_without_path(
    monkeypatch,
) -> None:
    monkeypatch.setenv("PATH", "")
    found = Path(flower_tool("flower-superlink"))
    assert found.parent in {Path(sysconfig.get_path("scripts")), Path(sys.executable).parent}


def test_a_locked_folder_names_its_holder_and_frees_when_the_holder_dies(tmp_path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time; from pathlib import Path; from server.lock import folder_lock\n"
            f"with folder_lock(Path({str(tmp_path)!r}), 'x.lock', role='test'):\n"
            "    print('held', flush=True); time.sleep(60)\n"
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


def test_the_process_listening_on_a_port_is_named() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        owners = listening_pids(port)
    # this process (pytest, or an xdist worker), named by its program, interpreter left out
    assert os.getpid() in owners and owners[os.getpid()] in " ".join(sys.argv + sys.orig_argv)


def test_flower_exit_codes_are_put_in_plain_words() -> None:
    text = "ERROR: SSL/TLS handshake error detected.\nERROR: Exit Code: 305\nmore"
    assert "could not connect to the coordinator" in flower_exit_reason(text)
    assert "Flower exit code 305" in flower_exit_reason(text)
    assert "Flower exit code 606" in flower_exit_reason("Exit Code: 606")
    assert flower_exit_reason("all fine") is None
    wrong_ca = "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed\nExit Code: 305"
    assert "certificate was not accepted" in flower_exit_reason(wrong_ca)


SUPERVISOR = """
import os, subprocess, sys, time
from federation.processes import supervisor_env
app = subprocess.Popen([sys.executable, sys.argv[1]], env={**os.environ, **supervisor_env()},
                       start_new_session=True)
print(app.pid, flush=True)
time.sleep(60)
"""
APP = """
import time
from federation.processes import follow_supervisor
assert follow_supervisor(poll=0.1)
time.sleep(60)
"""
PARENT = """
import os, sys, time
from federation.processes import start
child = start([sys.executable, "-c", "import time; time.sleep(60)"], env=dict(os.environ))
print(child.pid, flush=True)
time.sleep(60)
"""


def run_script(folder: Path, name: str, text: str, *args: str) -> subprocess.Popen:
    script = folder / name
    script.write_text(text)
    return subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, text=True)


def gone(pid: int, within: float) -> bool:
    """True once ``pid`` has exited (a zombie waiting for init counts as exited)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.1)
    return False


def test_an_app_process_exits_when_its_supervisor_dies(tmp_path) -> None:
    (tmp_path / "app.py").write_text(APP)
    supervisor = run_script(tmp_path, "supervisor.py", SUPERVISOR, str(tmp_path / "app.py"))
    app_pid = int(supervisor.stdout.readline())
    assert not gone(app_pid, within=3)  # it runs while its supervisor lives
    supervisor.kill()
    supervisor.wait()
    assert gone(app_pid, within=20)
    assert SUPERVISOR_GONE_EXIT_CODE == 75 and SUPERVISOR_ENV in supervisor_env()


def test_children_die_with_their_parent(tmp_path) -> None:
    parent = run_script(tmp_path, "parent.py", PARENT)
    child_pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    assert gone(child_pid, within=10), "the child outlived its killed parent"


GROUP = """
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(grandchild.pid, flush=True)
time.sleep(60)
"""


def test_stop_ends_the_whole_process_group(tmp_path) -> None:
    script = tmp_path / "group.py"
    script.write_text(GROUP)
    process = start([sys.executable, str(script)], env=dict(os.environ), stdout=subprocess.PIPE)
    grandchild = int(process.stdout.readline())
    stop(process, grace=2)
    assert gone(grandchild, within=5), "stop() left a process of the group running"
