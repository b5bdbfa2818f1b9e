"""Short federations through the real ClientApp with compressed updates (bf16, int8), with
and without secure aggregation: they complete, and report.json shows what travelled."""

from __future__ import annotations

import numpy as np
import pytest

from bench.simtools import federate_in_process
from client.round_state import RESIDUAL_FILE
from federation.settings import RunSettings
from server.rules import build_rule
from umedpt.errors import ConfigError

pytestmark = pytest.mark.slow  # the tiny preset is Swin-T: about 20-30 s a federation


def ratios(report: dict) -> tuple[list[float], list[float]]:
    """Per round and site: bytes down and up over the float32 bytes of the global weights
    (every group travels: the sites share only the encoder)."""
    full = report["global_shared_bytes"]
    down = [b / full for r in report["rounds"] for b in r["bytes_sent"].values()]
    up = [b / full for r in report["rounds"] for b in r["bytes_received"].values()]
    return down, up


def test_bf16_halves_both_directions(demo_sites, tmp_path) -> None:
    sites = [demo_sites[0], demo_sites[3]]
    report = federate_in_process(
        sites, tmp_path / "run", num_server_rounds=1, local_steps=1, compression="bf16", seed=3
    )
    assert report["status"] == "completed" and report["rounds"][0]["rejected"] == []
    down, up = ratios(report)
    assert all(0.49 < r < 0.52 for r in down + up), (down, up)
    traffic = report["traffic"]
    assert traffic["codec"] == "bf16" and traffic["downlink_codec"] == "bf16"
    assert traffic["rounds"][0]["up"] == sum(report["rounds"][0]["bytes_received"].values())


def test_int8_quarters_the_uplink_and_carries_its_residual(demo_sites, tmp_path, site_log) -> None:
    sites = [demo_sites[0], demo_sites[3]]
    report = federate_in_process(
        sites, tmp_path / "run", num_server_rounds=2, local_steps=1, compression="int8", seed=3
    )
    assert report["status"] == "completed"
    assert all(r["rejected"] == [] for r in report["rounds"])
    down, up = ratios(report)
    assert all(0.49 < r < 0.52 for r in down), down  # weights come down in bf16
    assert all(0.24 < r < 0.27 for r in up), up
    residuals = sorted((tmp_path / "run" / "sites").rglob(RESIDUAL_FILE))
    assert len(residuals) == 4  # each site, each round
    with np.load(residuals[-1]) as saved:
        assert all(np.all(np.isfinite(saved[k])) for k in saved.files)
    lines = site_log()
    assert sum("round 1: int8 change sent with error feedback (no residual: reset)" in line
               for line in lines) == 2  # fmt: skip
    assert sum("round 2: int8 change sent with error feedback (residual of round 1 added)"
               in line for line in lines) == 2  # fmt: skip


def test_bf16_composes_with_secure_aggregation(demo_sites, tmp_path) -> None:
    sites = [demo_sites[0], demo_sites[3]]
    report = federate_in_process(
        sites,
        tmp_path / "run",
        num_server_rounds=1,
        local_steps=1,
        compression="bf16",
        secure_aggregation=True,
        seed=3,
    )
    assert report["status"] == "completed" and report["rounds"][0]["rejected"] == []
    down, up = ratios(report)
    assert all(0.49 < r < 0.52 for r in down), down  # 16-bit weights down
    assert all(r > 0.99 for r in up), up  # the masked uplink stays 32-bit


def test_int8_is_refused_under_secure_aggregation_with_the_reason() -> None:
    with pytest.raises(ConfigError) as caught:
        build_rule(RunSettings(compression="int8", secure_aggregation=True), query_timeout=1)
    assert caught.value.field == "compression"
    assert "no int8 payload can be masked or summed" in str(caught.value)
