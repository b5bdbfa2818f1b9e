"""The run-state file as the round loop writes it (in-process federation, tiny sites)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from client.app import app as client_app
from dashboard.state import STATE_FORMAT, read_state
from dashboard.view import TIMEOUT_CLASS, page_data
from federation.settings import RunSettings
from server.federation import run_federation
from tests.federation.fakes import ClientAppGrid
from umedpt.data.demo import write_demo_federation


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory) -> list:
    demo = write_demo_federation(tmp_path_factory.mktemp("demo"), seed=0, images_per_site=30)
    return [f for f in demo if f.stem in ("clinic-b", "clinic-d")]


def federate(settings: RunSettings, **grid_kwargs) -> dict:
    nodes = {100 + i: {"partition-id": i} for i in range(len(settings.site_config_list()))}
    grid = ClientAppGrid(client_app, nodes, settings.to_run_config(), **grid_kwargs)
    return run_federation(grid, settings)


def test_the_round_loop_writes_the_state_and_a_resumption_keeps_its_history(
    two_sites, tmp_path
) -> None:
    out = tmp_path / "run"
    settings = RunSettings(
        num_server_rounds=1, local_steps=1, out_dir=str(out), state_root=str(out / "sites"),
        site_configs=",".join(str(s) for s in two_sites),
    )  # fmt: skip

    def vanish(node, message):  # clinic-d (node 101) never answers its training message
        return node == 101 and message.metadata.message_type == "train"

    report = federate(settings, failing=vanish)
    first = read_state(out)
    assert first["format"] == STATE_FORMAT and first["status"] == "completed"
    assert first["rounds"] == json.loads(json.dumps(report["rounds"]))  # as report.json
    assert first["running_round"] is None
    assert "arrays" not in str(first.keys()) and set(first["sites"]) == {"clinic-b", "clinic-d"}
    rows = {row.name: row for row in page_data(first, now=first["updated"]).sites}
    assert rows["clinic-d"].refused == 1 and rows["clinic-d"].refusal_class == TIMEOUT_CLASS
    assert rows["clinic-b"].rounds_trained == 1 and rows["clinic-b"].bytes_from_site > 0

    federate(replace(settings, num_server_rounds=2, resume=True))
    resumed = read_state(out)
    assert resumed["status"] == "completed" and len(resumed["rounds"]) == 2
    assert resumed["started"] == first["started"]
    assert [r["after_round"] for r in resumed["resumes"]] == [1]
    events = [(e.kind, e.round) for e in page_data(resumed, now=resumed["updated"]).events]
    # newest first: the resumption before round 2 comes after nothing of round 2's (no site
    # joined or left then) and before round 1's rejection and joins
    assert events == [("resumed", 2), ("rejected", 1), ("joined", 1), ("joined", 1)]
