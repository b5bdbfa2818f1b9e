"""Short federations through the real ClientApp with compressed updates (bf16, int8), with
and without secure aggregation: they complete, and report.json shows what travelled; int8
across a resume (the residual each site kept) and under client-level DP (which sees the
decoded change)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bench.simtools import federate_in_process
from client import compression as client_compression
from client.round_state import RESIDUAL_FILE, load_residual
from federation import packing
from federation.codecs import encode_with_feedback
from federation.codecs.int8 import Int8
from federation.settings import RunSettings
from server.rules import build_rule
from strategies import central_dp
from strategies.central_dp import clip_change
from tests.federation.inprocess import federate, settings_for
from umedpt.errors import ConfigError

pytestmark = pytest.mark.slow  # the tiny preset is Swin-T: about 20-30 s a federation


def ratios(report: dict) -> tuple[list[float], list[float]]:
    """Per round and site: bytes down and up over the float32 bytes of the global weights
    (every group travels: the sites share only the encoder)."""
    full = report["global_shared_bytes"]
    down = [b / full for r in report["rounds"] for b in r["bytes_sent"].values()]
    up = [b / full for r in report["rounds"] for b in r["bytes_received"].values()]
    return down, up


def test_bf16_halves_both_directions(demo_sites, tmp_path, monkeypatch) -> None:
    """... and travels packed (federation.packing, on by default) with the same byte counts."""
    packed: list[list[str]] = []
    pack = packing.pack
    monkeypatch.setattr(
        packing, "pack", lambda entries: packed.append(list(entries)) or pack(entries)
    )
    sites = [demo_sites[0], demo_sites[3]]
    report = federate_in_process(
        sites, tmp_path / "run", num_server_rounds=1, local_steps=1, compression="bf16", seed=3
    )
    assert report["status"] == "completed" and report["rounds"][0]["rejected"] == []
    # The train and the evaluate message, each packed once for both sites (they share the
    # encoder's weights), and each site's train reply: bf16 bits, raw markers.
    assert len(packed) == 2 + len(sites) and all(len(keys) > 100 for keys in packed)
    down, up = ratios(report)
    assert all(0.49 < r < 0.52 for r in down + up), (down, up)
    traffic = report["traffic"]
    assert traffic["codec"] == traffic["downlink_codec"] == traffic["uplink_codec"] == "bf16"
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
    assert report["traffic"]["uplink_codec"] == "masked"


def test_int8_is_refused_under_secure_aggregation_with_the_reason() -> None:
    with pytest.raises(ConfigError) as caught:
        build_rule(RunSettings(compression="int8", secure_aggregation=True), query_timeout=1)
    assert caught.value.field == "compression"
    assert "no int8 payload can be masked or summed" in str(caught.value)


# timm's smallest test encoder under the tiny preset's blocks: what these check (the
# residual, the order of decoding and DP) does not depend on the encoder's size
CHEAP = "test_efficientnet"


def test_int8_resumes_with_the_residual_each_site_kept(demo_sites, tmp_path, monkeypatch) -> None:
    sites = [demo_sites[0], demo_sites[3]]
    settings = settings_for(
        sites, tmp_path / "run", num_server_rounds=1, compression="int8", encoder=CHEAP
    )
    assert federate(settings)[0]["status"] == "completed"  # stopped after round 1
    before = {
        path: dict(np.load(path)) for path in (tmp_path / "run" / "sites").rglob(RESIDUAL_FILE)
    }
    assert len(before) == 2 and all(p.parent.name == "round-00001" for p in before)
    loaded = []

    def spy(rounds, before_round):
        kept = load_residual(rounds, before_round)
        loaded.append((before_round, kept))
        return kept

    monkeypatch.setattr(client_compression, "load_residual", spy)
    report, _ = federate(replace(settings, num_server_rounds=2, resume=True))
    assert report["status"] == "completed" and [r["round"] for r in report["rounds"]] == [1, 2]
    assert all(r["rejected"] == [] for r in report["rounds"])
    assert [(r, kept[0]) for r, kept in loaded] == [(2, 1), (2, 1)]  # round 1's, each site
    for residual in (kept[1] for _, kept in loaded):  # exactly what was written before the stop
        (match,) = [
            saved
            for saved in before.values()
            if saved.keys() == residual.keys()
            and all(np.array_equal(saved[k], residual[k]) for k in saved)
        ]
        assert any(np.any(v != 0) for v in match.values())
    for path, saved in before.items():  # and the resumed round left round 1's file alone
        with np.load(path) as now:
            assert all(np.array_equal(now[k], saved[k]) for k in saved)
        assert (path.parent.parent / "round-00002" / RESIDUAL_FILE).is_file()


def test_client_dp_clips_and_noises_the_decoded_int8_change(demo_sites, tmp_path, monkeypatch):
    """The server decodes each site's int8 change before client-level DP sees it (as
    federation/compression.py and the README say): DP clips exactly what the site sent,
    decoded, and the clipped change is within the bound."""
    sent: list[dict[str, np.ndarray]] = []  # each site's int8 change, decoded on its own

    def encode_spy(codec, change, residual):
        encoded, kept = encode_with_feedback(codec, change, residual)
        sent.append(Int8().decode(encoded.entries))
        return encoded, kept

    clips: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []

    def clip_spy(change, clip):
        clipped, norm = clip_change(change, clip)
        clips.append((change, clipped))
        return clipped, norm

    monkeypatch.setattr(client_compression, "encode_with_feedback", encode_spy)
    monkeypatch.setattr(central_dp, "clip_change", clip_spy)
    bound = 1e-3  # far below a step's change: every change is clipped
    report, _ = federate(
        settings_for(
            [demo_sites[0], demo_sites[3]], tmp_path / "run", num_server_rounds=1,
            compression="int8", encoder=CHEAP, client_dp_noise=0.5, client_dp_clip=bound,
        )
    )  # fmt: skip
    assert report["status"] == "completed" and report["rounds"][0]["rejected"] == []
    assert report["client_dp"]["encoder"]["rounds"] == 1
    assert len(sent) == 2 and len(clips) == 2  # one group (the encoder), two sites
    for change, clipped in clips:
        floats = [k for k in change if sent[0][k].dtype == np.float32]
        (site,) = [
            s for s in sent if all(np.allclose(change[k], s[k], rtol=0, atol=1e-6) for k in floats)
        ]
        assert norm(change) > bound and norm(clipped) == pytest.approx(bound)


def norm(arrays: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum(np.square(v, dtype=np.float64)) for v in arrays.values())))
