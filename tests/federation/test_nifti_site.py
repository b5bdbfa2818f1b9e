"""The demo NIfTI site trains in a federation: the real ClientApp in-process, no Ray."""

from __future__ import annotations

import json
import logging

from client.app import app as client_app
from federation.settings import RunSettings
from server.federation import run_federation
from umedpt.data.demo_nifti import write_nifti_site
from umedpt_fl.inprocess import ClientAppGrid


def test_nifti_site_trains_in_a_federation_and_decodes_its_slices_once(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="umedpt.data.loading")
    site = write_nifti_site(tmp_path / "demo", volumes=4)
    settings = RunSettings(
        num_server_rounds=2,
        local_steps=1,
        out_dir=str(tmp_path / "run"),
        site_configs=str(site),
        state_root=str(tmp_path / "run" / "sites"),
        seed=3,
        eval_every=2,
    )
    grid = ClientAppGrid(client_app, {100: {"partition-id": 0}}, settings.to_run_config())
    report = run_federation(grid, settings)

    assert report["status"] == "completed"
    assert not [r for r in grid.received if r.has_error()]
    metrics = json.loads((tmp_path / "run" / "report.json").read_text())["rounds"][-1]
    evaluated = metrics["eval_metrics"]["clinic-nifti"]
    assert 0 <= evaluated["ct-lesions/dice"] <= 1
    assert 0 <= evaluated["mr-contrast/balanced_accuracy"] <= 1
    # each task decoded once in the two rounds, its slices kept in the site's state folder
    # (a fresh client process reads them from there: tests/data/test_nifti.py)
    loads = [r.getMessage() for r in caplog.records if r.name == "umedpt.data.loading"]
    decoded = [m for m in loads if "samples in" in m and "read from the cache" not in m]
    assert sorted(m.split("'")[1] for m in decoded) == ["ct-lesions", "mr-contrast"]
    cache = tmp_path / "demo" / "state" / "clinic-nifti" / "cache"
    assert sorted(p.name.split(".")[0] for p in cache.glob("*.safetensors")) == [
        "ct-lesions",
        "mr-contrast",
    ]
