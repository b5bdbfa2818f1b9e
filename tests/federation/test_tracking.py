"""The coordinator's tracking and log: every round's values reach the tracker, and its log
names the sites that joined, dropped out or were rejected (in-process, no Ray)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
from flwr.app import Message, RecordDict
from typer.testing import CliRunner

from federation import wire
from federation.settings import RUN_CONFIG_ENV, RunSettings, settings_for_app
from server.federation import run_federation
from server.report import round_scalars
from tests.federation.fakes import ScriptedGrid
from tests.federation.inprocess import federate, settings_for
from tests.helpers import mlflow_store, read_scalars
from umedpt.errors import ConfigError
from umedpt.tracking import TENSORBOARD_DIR

SITES = {11: ("a", ("segmentation",), 10), 22: ("b", ("segmentation",), 30), 33: ("c", (), 60)}


class LeavingGrid(ScriptedGrid):
    """Site c disconnects after round 1; site b sends training replies without weights."""

    def __init__(self) -> None:
        super().__init__(SITES, tamper=self.no_weights)

    @staticmethod
    def no_weights(node, arrays, metrics):
        return RecordDict({wire.METRICS: metrics}) if node == 22 else None

    def deliver(self, message: Message) -> Message:
        reply = super().deliver(message)
        node = message.metadata.dst_node_id
        if message.metadata.message_type == "evaluate" and node == 33:
            self.node_ids.remove(33)
        return reply


@pytest.fixture
def flower_log():
    """The lines Flower's logger (the coordinator's log) prints."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("flwr")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def test_every_round_reaches_tensorboard_as_the_report_has_it(demo_sites, tmp_path) -> None:
    out = tmp_path / "run"
    report, _ = federate(settings_for([demo_sites[0]], out))  # real ClientApp, default tracking
    scalars = read_scalars(out / TENSORBOARD_DIR)
    assert f"tensorboard --logdir {out / TENSORBOARD_DIR}" in report["tracking"]
    rounds = report["rounds"]
    assert scalars["round/seconds"] == [
        (r["round"], pytest.approx(r["seconds"], rel=1e-6)) for r in rounds
    ]
    assert scalars["round/sites_replied"] == [(1, 1.0), (2, 1.0)]
    for site, sent in rounds[-1]["bytes_sent"].items():
        total = sent + rounds[-1]["bytes_sent_for_evaluation"][site]
        assert scalars[f"bytes/sent/{site}"][-1] == (2, total)
        assert scalars[f"bytes/received/{site}"][-1] == (2, rounds[-1]["bytes_received"][site])
    for site, metrics in rounds[-1]["eval_metrics"].items():
        task_metrics = {k: v for k, v in metrics.items() if wire.split_task_metric(k)}
        assert task_metrics  # e.g. lesions/auroc, lesions/loss
        for key, value in task_metrics.items():
            assert scalars[f"site/{site}/{key}"][-1] == (2, pytest.approx(value))


def test_the_coordinator_log_names_who_joined_dropped_and_was_rejected(
    tmp_path, flower_log
) -> None:
    settings = RunSettings(num_server_rounds=2, out_dir=str(tmp_path / "run"), tracking="none")
    report = run_federation(LeavingGrid(), settings)
    assert report["status"] == "completed"
    events = [line for line in flower_log if line.startswith("round ") and ": site " in line]
    assert events[:3] == [
        "round 1: site a joined (node 11)",
        "round 1: site b joined (node 22)",
        "round 1: site c joined (node 33)",
    ]
    assert events[3].startswith("round 1: site b rejected: training: ")
    assert events[4:6] == [
        "round 2: site c dropped out: no longer connected (it took part in round 1)",
        events[3].replace("round 1", "round 2"),
    ]
    assert len(events) == 6
    progress = [line for line in flower_log if line.startswith("round 1/2") or "round 2/2" in line]
    assert "2/3 sites replied" in progress[0] and "1/2 sites replied" in progress[-1]


def test_mlflow_gets_every_round_and_the_final_files(tmp_path, monkeypatch) -> None:
    uri = mlflow_store(tmp_path, monkeypatch)
    from mlflow.tracking import MlflowClient

    out = tmp_path / "run"
    (out / "export").mkdir(parents=True)  # a stale card of an earlier run: never logged
    (out / "export" / "model_card.json").write_text('{"stale": true}')
    settings = RunSettings(
        num_server_rounds=2, out_dir=str(out), tracking="mlflow", tracking_uri=uri
    )
    report = run_federation(ScriptedGrid(SITES), settings)

    client = MlflowClient(tracking_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "umedpt-fl"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == f"run-{report['config']['run-key']}"
    assert report["tracking"].startswith(f"MLflow run {run.info.run_id} ")
    seconds = client.get_metric_history(run.info.run_id, "round/seconds")
    assert [(m.step, m.value) for m in seconds] == [
        (r["round"], pytest.approx(r["seconds"])) for r in report["rounds"]
    ]
    assert run.data.metrics["bytes/received/b"] == report["rounds"][-1]["bytes_received"]["b"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.json", "global", "README.md", "model_card.json"} <= artifacts
    card = json.loads((out / "export" / "model_card.json").read_text())
    assert "stale" not in card and card["training"]["rounds"] == 2
    assert json.loads((out / "report.json").read_text())["status"] == "completed"


def test_round_scalars_carry_privacy_spend_and_skip_site_level_keys() -> None:
    record = {
        "round": 3,
        "seconds": 4.0,
        "bytes_sent": {"a": 100},
        "bytes_received": {"a": 90},
        "train_metrics": {
            "a": {
                wire.DP_EPSILON: 1.5,
                wire.DP_DELTA: 1e-5,
                wire.NUM_EXAMPLES: 32.0,
                wire.TRAIN_SECONDS: 2.0,
                "lesions/train-loss": 0.7,
            }
        },
        "eval_metrics": {"a": {"lesions/auroc": 0.8, wire.NUM_EXAMPLES: 10.0}},
        "rejected": [["b", "training: no reply before the round timeout"]],
        "client_dp": {"encoder": {"epsilon": 2.0, "sites": 2.0}},
    }
    assert round_scalars(record) == {
        "round/seconds": 4.0,
        "round/sites_replied": 1.0,
        "round/sites_rejected": 1.0,
        "round/bytes_sent": 100.0,
        "round/bytes_received": 90.0,
        "bytes/sent/a": 100.0,
        "bytes/received/a": 90.0,
        "site/a/lesions/train-loss": 0.7,
        "site/a/lesions/auroc": 0.8,
        "seconds/train/a": 2.0,
        "privacy/epsilon/a": 1.5,
        "privacy/delta/a": 1e-5,
        "privacy/client-epsilon/encoder": 2.0,
    }


def test_tracking_settings_travel_to_a_simulated_server_app(monkeypatch) -> None:
    """`simulate` hands its settings to the ServerApp in RUN_CONFIG_ENV: tracking too."""
    sent = RunSettings(tracking="mlflow", tracking_uri="http://h:5000", tracking_experiment="x")
    monkeypatch.setenv(RUN_CONFIG_ENV, sent.to_json())
    received = settings_for_app({})
    assert received.tracking_config("r") == replace(sent.tracking_config("r"))
    with pytest.raises(ConfigError, match="field 'tracking'.*tensorboard, mlflow, none"):
        RunSettings.from_run_config({"tracking": "wandb"})


@pytest.mark.parametrize("command", ["server", "simulate", "pretrain"])
def test_commands_refuse_mlflow_without_a_uri_before_starting(
    command, demo_sites, tmp_path, monkeypatch
) -> None:
    from umedpt_fl.cli import app

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "out"
    args = {
        "server": ["server", "--insecure"],
        "simulate": ["simulate", "--site", str(demo_sites[0])],
        "pretrain": ["pretrain", "--site", str(demo_sites[0])],
    }[command]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--tracking", "mlflow"])
    assert result.exit_code == 2, result.output
    assert "--tracking-uri" in result.output
    assert not (out / "report.json").exists() and not (out / "checkpoint").exists()


def test_no_tracking_writes_no_event_files(tmp_path) -> None:
    out = tmp_path / "run"
    run_federation(
        ScriptedGrid(SITES), RunSettings(num_server_rounds=1, out_dir=str(out), tracking="none")
    )
    assert not Path(out / TENSORBOARD_DIR).exists()
