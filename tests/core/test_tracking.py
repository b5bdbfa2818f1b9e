"""Run tracking: each backend's values read back from its own files, and its errors."""

from __future__ import annotations

import importlib.util
import logging

import pytest

from tests.helpers import mlflow_store, read_scalars
from umedpt.data.demo import write_demo_federation
from umedpt.errors import ConfigError
from umedpt.pretrain import PretrainConfig, pretrain
from umedpt.tracking import (
    TENSORBOARD_DIR,
    GuardedTracker,
    NullTracker,
    Tracker,
    TrackingConfig,
    TrackingError,
    check_tracking,
    create_tracker,
)
from umedpt.tracking.mlflow_tracker import metric_key


def test_tensorboard_writes_event_files_that_read_back(tmp_path) -> None:
    tracker = create_tracker(TrackingConfig(), log_dir=tmp_path / "tb")
    assert isinstance(tracker, Tracker)
    assert tracker.where == f"TensorBoard event files (tensorboard --logdir {tmp_path / 'tb'})"
    tracker.log_scalars(1, {"round/seconds": 2.5, "site/a/lesions/auroc": 0.6})
    tracker.log_scalars(2, {"round/seconds": 3.0, "site/a/lesions/auroc": float("nan")})
    tracker.log_artifact(tmp_path)  # TensorBoard keeps no files: nothing happens
    tracker.close()
    scalars = read_scalars(tmp_path / "tb")
    assert scalars["round/seconds"] == [(1, 2.5), (2, 3.0)]
    assert scalars["site/a/lesions/auroc"] == [(1, pytest.approx(0.6))]  # NaN skipped


def test_none_tracks_nothing(tmp_path) -> None:
    tracker = create_tracker(TrackingConfig(kind="none"), log_dir=tmp_path / "tb")
    assert isinstance(tracker, NullTracker)
    tracker.log_scalars(1, {"x": 1.0})
    tracker.close()
    assert not (tmp_path / "tb").exists()


def test_an_unknown_kind_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="tensorboard, mlflow, none"):
        TrackingConfig(kind="wandb")


def test_mlflow_logs_scalars_and_artifacts_to_a_local_store(tmp_path, monkeypatch) -> None:
    uri = mlflow_store(tmp_path, monkeypatch)
    from mlflow.tracking import MlflowClient

    config = TrackingConfig(kind="mlflow", uri=uri, experiment="tests", run_name="run-1")
    tracker = create_tracker(config, log_dir=tmp_path / "unused")
    tracker.log_scalars(1, {"round/seconds": 2.5, "bytes/sent/a (node 7)": 10.0})
    tracker.log_scalars(2, {"round/seconds": 3.0})
    (tmp_path / "report.json").write_text("{}")
    (tmp_path / "global").mkdir()
    (tmp_path / "global" / "encoder.safetensors").write_bytes(b"weights")
    tracker.log_artifact(tmp_path / "report.json")
    tracker.log_artifact(tmp_path / "global")
    tracker.close()

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(tracker.run_id)
    assert run.info.run_name == "run-1" and run.info.status == "FINISHED"
    history = client.get_metric_history(tracker.run_id, "round/seconds")
    assert [(m.step, m.value) for m in history] == [(1, 2.5), (2, 3.0)]
    assert run.data.metrics[metric_key("bytes/sent/a (node 7)")] == 10.0
    assert metric_key("bytes/sent/a (node 7)") == "bytes/sent/a _node 7_"
    artifacts = {a.path for a in client.list_artifacts(tracker.run_id)}
    assert artifacts == {"report.json", "global"}
    assert [a.path for a in client.list_artifacts(tracker.run_id, "global")] == [
        "global/encoder.safetensors"
    ]


def test_mlflow_without_a_uri_says_how_to_give_one(monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    with pytest.raises(TrackingError, match="--tracking-uri.*MLFLOW_TRACKING_URI"):
        check_tracking(TrackingConfig(kind="mlflow"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example.org:5000")
    check_tracking(TrackingConfig(kind="mlflow"))  # the variable is enough


def test_mlflow_not_installed_names_the_package(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name)
    )
    with pytest.raises(TrackingError, match=r"pip install 'umedpt-fl\[tracking\]'"):
        check_tracking(TrackingConfig(kind="mlflow", uri="http://mlflow.example.org:5000"))


def test_a_password_in_the_uri_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    with pytest.raises(TrackingError, match="MLFLOW_TRACKING_PASSWORD"):
        check_tracking(TrackingConfig(kind="mlflow", uri="https://me:secret@mlflow.example.org"))
    for uri in ("https://TOKEN@mlflow.example.org", "https://mlflow.example.org/?token=x"):
        with pytest.raises(TrackingError, match="MLFLOW_TRACKING_PASSWORD"):
            check_tracking(TrackingConfig(kind="mlflow", uri=uri))


class Broken:
    """A backend that fails on every call, like an MLflow server that went away."""

    calls = 0
    where = "a server that went away"

    def log_scalars(self, step, scalars) -> None:
        self.calls += 1
        raise ConnectionError("mlflow.example.org: connection refused")

    log_artifact = log_scalars
    close = log_scalars


def test_a_failing_backend_is_reported_once_and_switched_off(caplog) -> None:
    inner = Broken()
    tracker = GuardedTracker(inner)
    with caplog.at_level(logging.WARNING, logger="umedpt.tracking"):
        tracker.log_scalars(1, {"x": 1.0})
        tracker.log_scalars(2, {"x": 1.0})
        tracker.close()
    assert inner.calls == 1
    assert [r.getMessage() for r in caplog.records] == [
        "run tracking (Broken) failed and is off for the rest of the run: "
        "ConnectionError: mlflow.example.org: connection refused"
    ]


def test_pretrain_logs_each_validation_tagged_by_site_and_task(tmp_path) -> None:
    from umedpt.config import load_site_config

    files = write_demo_federation(tmp_path / "demo", seed=0, images_per_site=30)
    sites = [load_site_config(files[0])]  # one site: two steps, each validated
    out = tmp_path / "run"
    config = PretrainConfig(steps=2, eval_every=1, device="cpu")
    result = pretrain(sites, config, out)

    scalars = read_scalars(out / TENSORBOARD_DIR)
    site, task = sites[0].name, sites[0].tasks[0].name
    assert [step for step, _ in scalars["train/seconds"]] == [1, 2]
    val = result.history[-1]["val"][task]
    for name, value in val.items():
        assert scalars[f"site/{site}/{task}/{name}"][-1] == (2, pytest.approx(value))
    loss = result.history[-1]["train_loss"][task]
    assert scalars[f"site/{site}/{task}/train-loss"][-1] == (2, pytest.approx(loss))
