"""A real deployment on loopback: `umedpt-fl server` plus two `umedpt-fl client` SuperNodes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import tagged_env, tagged_processes_after

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(*args: str, log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "umedpt_fl.cli", *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
    )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_server_and_two_sites_complete_a_round_over_loopback(demo_sites, tmp_path) -> None:
    port = free_port()
    env, tag = tagged_env()
    out = tmp_path / "fed"
    server = cli(
        "server", "--out", str(out), "--insecure", "--host", "127.0.0.1", "--port", str(port),
        "--min-sites", "2", "--rounds", "1", "--local-steps", "1", "--node-wait-timeout", "120",
        log=tmp_path / "server.log", env=env,
    )  # fmt: skip
    clients = [
        cli(
            "client",
            "--site",
            str(site),
            "--server",
            f"127.0.0.1:{port}",
            "--insecure",
            "--port",
            str(free_port()),
            "--skip-check",
            log=tmp_path / f"client-{i}.log",
            env=env,
        )  # fmt: skip
        for i, site in enumerate([demo_sites[1], demo_sites[3]])
    ]
    try:
        code = server.wait(timeout=400)
    finally:
        for process in [server, *clients]:
            stop(process)
    assert not tagged_processes_after(tag)
    logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in sorted(tmp_path.glob("*.log")))
    assert code == 0, logs
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "completed"
    assert set(report["rounds"][0]["eval_metrics"]) == {"clinic-b", "clinic-d"}
    assert (out / "superlink.db").is_file()
