"""`umedpt-fl simulate` as a user runs it: Flower's Ray simulation in a child process."""

from __future__ import annotations

import json
import subprocess
import sys
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
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listing.splitlines() if "raylet" in line or "ray::" in line}


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
    assert ray_processes() <= before


def test_failed_simulation_exits_non_zero_and_says_why(demo_sites, tmp_path) -> None:
    broken = tmp_path / "broken.toml"
    text = demo_sites[3].read_text().replace('path = "clinic-d/', 'path = "missing/')
    broken.write_text(text.replace('name = "clinic-d"', 'name = "broken"'))
    result = simulate(tmp_path / "sim", [broken])
    assert result.returncode == 1
    assert "federated run failed" in result.stdout + result.stderr
    assert json.loads((tmp_path / "sim" / "report.json").read_text())["status"] == "failed"
