"""`umedpt-fl simulate` as a user runs it: Flower's Ray simulation in a child process.

Each test checks only the processes it started (adopted by the command's keeper,
:class:`tests.processes.Tracked`)."""

from __future__ import annotations

import json

import pytest

from tests.federation.simulation import simulate
from umedpt.checkpoint import load_model, read_header

pytestmark = pytest.mark.slow


def test_simulation_reports_every_site_and_leaves_nothing_running(demo_sites, tmp_path) -> None:
    """... with bf16 under secure aggregation (they compose; report.json gives the bytes)."""
    sites = [demo_sites[1], demo_sites[3]]
    result = simulate(tmp_path / "sim", sites, "--compression", "bf16", "--secure-aggregation")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "round 1/2" in output and "round 2/2" in output
    assert "site clinic-b" in output and "site clinic-d" in output
    report = json.loads((tmp_path / "sim" / "report.json").read_text())
    assert report["status"] == "completed" and len(report["rounds"]) == 2
    assert report["config"]["min-sites"] == 2  # every listed site, unless asked otherwise
    traffic, full = report["traffic"], report["global_shared_bytes"]
    assert (traffic["codec"], traffic["downlink_codec"], traffic["uplink_codec"]) == (
        "bf16", "bf16", "masked",
    )  # fmt: skip
    for record in report["rounds"]:  # bf16 weights down, the masked uplink stays 32-bit
        assert all(0.49 < b / full < 0.52 for b in record["bytes_sent"].values()), record
        assert all(0.99 < b / full < 1.02 for b in record["bytes_received"].values()), record
    assert "per round: " in output and "MB up (masked)" in output
    assert (tmp_path / "sim" / "metrics.png").is_file()
    model = load_model(tmp_path / "sim" / "global")  # the folder alone, no report needed
    assert not model.blocks  # by default only the encoder is averaged ...
    homes = sorted((tmp_path / "sim" / "sites").glob("*/runs/*/latest-heads"))
    blocks = {g for home in homes for g in read_header(home)["groups"] if g.startswith("blocks.")}
    assert blocks == {"blocks.classification", "blocks.segmentation"}  # ... blocks stay home
    assert result.process.all_gone()


def test_a_site_with_missing_data_is_named_before_anything_starts(demo_sites, tmp_path) -> None:
    broken = tmp_path / "broken.toml"
    text = demo_sites[3].read_text().replace('path = "clinic-d/', 'path = "missing/')
    broken.write_text(text.replace('name = "clinic-d"', 'name = "broken"'))
    result = simulate(tmp_path / "sim", [demo_sites[1], broken])
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "broken.toml" in output and "missing" in output
    assert "Traceback" not in output
    assert not (tmp_path / "sim" / "report.json").exists()  # Ray never started
    assert result.process.all_gone()


def test_a_failed_run_exits_1_and_says_why(demo_sites, tmp_path) -> None:
    result = simulate(tmp_path / "sim", [demo_sites[3]], "--round-timeout", "0.01")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "federated run failed" in output
    assert json.loads((tmp_path / "sim" / "report.json").read_text())["status"] == "failed"
    assert result.process.all_gone()
