"""A site with only unlabelled images (self-supervised) joins a federation in-process."""

from __future__ import annotations

import pytest

from server.federation import progress_line
from server.report import primary_metrics
from strategies.records import RoundRecord
from tests.federation.inprocess import federate, settings_for


@pytest.mark.parametrize("share_blocks", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_an_unlabelled_site_trains_the_encoder_and_reports_its_metric(
    demo_sites, tmp_path, share_blocks
) -> None:
    sites = [demo_sites[3], demo_sites[4]]  # clinic-d (labelled npz) and clinic-e (unlabelled)
    report, grid = federate(settings_for(sites, tmp_path, share_blocks=share_blocks))
    assert report["status"] == "completed", report.get("error")
    assert primary_metrics(report["sites"])["clinic-e"] == [("scans", "reconstruction_score")]
    last = report["rounds"][-1]
    metrics = last["eval_metrics"]["clinic-e"]
    assert -1.0 < metrics["scans/reconstruction_score"] < 1.0
    assert metrics["scans/effective_rank"] > 0
    # both sites' encoders were averaged; the unlabelled site's (empty) block sent nothing
    for reply in grid.received:
        for record in reply.content.array_records.values():
            assert all(k.startswith("encoder.") or k.startswith("blocks.") for k in record.keys())
            assert not any(k.startswith("blocks.self-supervised") for k in record.keys())
    assert set(last["train_metrics"]) == {"clinic-d", "clinic-e"}
    record = RoundRecord(2, eval_metrics=last["eval_metrics"], train_metrics=last["train_metrics"])
    line = progress_line(2, 2, record, report["sites"])  # the per-round line the server logs
    assert "scans/reconstruction_score=" in line
