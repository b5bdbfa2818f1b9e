"""`umedpt-fl simulate` as a user runs it: Flower's Ray simulation in a child process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def simulate(out: Path, sites: list[Path], *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "umedpt_fl.cli", "simulate", "--out", str(out)]
    for site in sites:
        command += ["--site", str(site)]
    command += ["--rounds", "2", "--local-steps", "1", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def ray_processes() -> set[str]:
    """Live Ray processes (zombies are already dead, waiting to be reaped by init)."""
    listing = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout
    return {
        parts[0]
        for parts in (line.split(None, 2) for line in listing.splitlines()[1:])
        if len(parts) == 3
        and not parts[1].startswith("Z")
        and ("raylet" in parts[2] or "ray::" in parts[2])
    }


def ray_processes_after(before: set[str], seconds: float = 20.0) -> set[str]:
    """Ray processes still alive after giving shutdown a few seconds."""
    deadline = time.monotonic() + seconds
    while (left := ray_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def test_simulation_reports_every_site_and_leaves_nothing_running(demo_sites, tmp_path) -> None:
    before = ray_processes()
    result = simulate(tmp_path / "sim", [demo_sites[1], demo_sites[3]])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "round 1/2" in output and "round 2/2" in output
    assert "site clinic-b" in output and "site clinic-d" in output
    report = json.loads((tmp_path / "sim" / "report.json").read_text())
    assert report["status"] == "completed" and len(report["rounds"]) == 2
    assert (tmp_path / "sim" / "metrics.png").is_file()
    assert list((tmp_path / "sim" / "global").glob("encoder.safetensors"))
    assert not ray_processes_after(before)


def test_failed_simulation_exits_non_zero_and_says_why(demo_sites, tmp_path) -> None:
    broken = tmp_path / "broken.toml"
    text = demo_sites[3].read_text().replace('path = "clinic-d/', 'path = "missing/')
    broken.write_text(text.replace('name = "clinic-d"', 'name = "broken"'))
    result = simulate(tmp_path / "sim", [broken])
    assert result.returncode == 1
    assert "federated run failed" in result.stdout + result.stderr
    assert json.loads((tmp_path / "sim" / "report.json").read_text())["status"] == "failed"
