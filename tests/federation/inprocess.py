"""Helpers that drive the federation in-process (real ClientApp, real ServerApp logic, no Ray):
a run's settings, a whole federation, a site file of one's own and one server message.

Shared by the federation and dashboard tests; test modules import these, never each other.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from client.app import app as client_app
from federation import wire
from federation.settings import RunSettings
from server.federation import run_federation
from tests.federation.fakes import ClientAppGrid
from umedpt.config import load_site_config

PRIVACY = "\n[privacy]\ntarget_epsilon = 8.0\ntarget_delta = 1e-5\nmax_grad_norm = 1.0\n"


def settings_for(sites: list[Path], out: Path, **overrides) -> RunSettings:
    """Two rounds of one local step on ``sites``, written under ``out``; ``overrides`` win."""
    base = RunSettings(
        num_server_rounds=2,
        local_steps=1,
        out_dir=str(out),
        site_configs=",".join(str(s) for s in sites),
        state_root=str(out / "sites"),
        seed=3,
    )
    return replace(base, **overrides)


def federate(settings: RunSettings, **grid_kwargs) -> tuple[dict, ClientAppGrid]:
    """The whole federation of ``settings``: its report and the grid that saw every message."""
    nodes = {100 + i: {"partition-id": i} for i in range(len(settings.site_config_list()))}
    grid = ClientAppGrid(client_app, nodes, settings.to_run_config(), **grid_kwargs)
    return run_federation(grid, settings), grid


def own_site(demo_site: Path, state: Path, *, privacy: bool = False) -> Path:
    """A copy of a demo site file (beside it: same data) with a state folder of its own."""
    text = demo_site.read_text()
    name = load_site_config(demo_site).name
    text = text.replace(f'state_dir = "state/{name}"', f'state_dir = "{state}"')
    if privacy:
        text = text.replace("[[tasks]]", PRIVACY + "\n[[tasks]]", 1)
    path = demo_site.parent / f"{name}-log-{state.parent.name}.toml"
    path.write_text(text)
    return path


def ask(kind: str, node: int, shared: dict, server_round: int) -> Message:
    """A server's train or evaluate message, as the ServerApp sends it."""
    config = ConfigRecord({wire.SERVER_ROUND: server_round, wire.RUN_KEY: "r"})
    content = RecordDict({wire.CONFIG: config, wire.SHARED_ARRAYS: ArrayRecord(shared)})
    return Message(content, dst_node_id=node, message_type=kind)
