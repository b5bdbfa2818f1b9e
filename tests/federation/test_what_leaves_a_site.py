"""What leaves a site, read as a curious server would: an error reply carries a reason
class and nothing of the data; the app config holds the sites' settings only; checkpoints,
report and model card hold no address or path; under DP, an evaluation reply's count is
the expected one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode

import client.app as app_module
from client.app import SITE_CONFIG_NODE_KEY
from client.app import app as client_app
from client.refusals import refusal_reply
from client.secagg import SecAggError
from client.site import PrivacyBudgetSpent, SiteRunner
from client.task_data import cached_runs
from client.train_report import expected_examples
from federation import secagg, wire
from federation.reasons import Refusal
from federation.settings import RunSettings
from server.federation import run_federation
from server.state import GLOBAL_CHECKPOINT, SERVER_STATE
from tests.federation.fakes import ClientAppGrid, ScriptedGrid
from tests.federation.inprocess import ask, own_site
from umedpt.config import load_site_config
from umedpt.errors import ConfigError, DataError
from umedpt.export.exporter import export_checkpoint

SECRET_URI = "http://user:secret@mlflow.example.org:5000"
LABEL = "melanoma-of-patient-4711"  # what a bad CSV row holds, which must stay home


def as_flower_delivers(message: Message, context: Context) -> Message:
    """The reply the server gets: an exception raised from the ClientApp becomes an error
    reply carrying ``str(exception)``, as Flower's runtime does it (Flower 1.42.0,
    ``flwr/supernode/runtime/run_clientapp.py``, and the simulation's ``vce_api.py``)."""
    try:
        return client_app(message, context)
    except Exception as ex:
        reason = str(type(ex)) + ":<'" + str(ex) + "'>"
        error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)
        return Message(error, reply_to=message)


def csv_site(demo_site: Path, folder: Path) -> Path:
    """A site whose CSV has one row with a label that is no class: a data error."""
    images = folder / "images"
    shutil.copytree(demo_site.parent / "clinic-a" / "lesions", images)
    rows = ["path,label"]
    rows += [f"{p.relative_to(images)},{p.parent.name}" for p in sorted(images.rglob("*.png"))]
    rows.insert(3, f"striped/striped_0011.png,{LABEL}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    site = folder / "hospital-x.toml"
    site.write_text(
        f'name = "hospital-x"\nstate_dir = "{folder / "state"}"\n\n[[tasks]]\n'
        f'name = "lesions"\ntype = "classification"\nformat = "csv"\n'
        f'path = "{folder / "labels.csv"}"\n'
        'classes = ["homogeneous", "speckled", "striped"]\nimage_size = 64\nbatch_size = 16\n'
    )
    return site


def test_a_data_error_reaches_the_server_as_its_class_and_the_site_log_has_the_rest(
    demo_sites, tmp_path, site_log
) -> None:
    site_file = csv_site(demo_sites[0], tmp_path / "x")
    settings = RunSettings(local_steps=1, state_root=str(tmp_path / "runs"))
    node = {SITE_CONFIG_NODE_KEY: str(site_file)}
    context = Context(1, 7, node, RecordDict(), settings.to_run_config())
    reply = as_flower_delivers(ask("train", 7, {}, 1), context)
    assert reply.has_error()
    assert reply.error.reason == Refusal.DATA_ERROR.value  # nothing else: no path, row, label
    details = "\n".join(site_log())
    assert LABEL in details and "labels.csv, row 4" in details  # kept in the site's own log
    assert "only the reason class 'data error' is sent" in details


def test_the_servers_report_holds_the_class_of_a_broken_sites_refusal(demo_sites, tmp_path) -> None:
    """A whole round with a good site and the broken one: report.json (what the tracker
    and the model card read) names the class, not the row."""
    broken = csv_site(demo_sites[0], tmp_path / "x")
    out = tmp_path / "run"
    sites = [demo_sites[3], broken]
    settings = RunSettings(
        num_server_rounds=1, local_steps=1, out_dir=str(out), tracking="none", seed=1,
        site_configs=",".join(str(s) for s in sites), state_root=str(out / "sites"),
    )  # fmt: skip
    nodes = {100 + i: {"partition-id": i} for i in range(len(sites))}
    grid = ClientAppGrid(as_flower_delivers, nodes, settings.to_run_config())
    report = run_federation(grid, settings)
    assert report["status"] == "completed"
    assert report["rounds"][0]["rejected"] == [
        ("hospital-x", "training: the site reported an error (code 2): data error"),
        ("hospital-x", "evaluation: the site reported an error (code 2): data error"),
    ]
    saved = (out / "report.json").read_text()
    assert LABEL not in saved and "labels.csv" not in saved and str(tmp_path / "x") not in saved


@pytest.mark.parametrize(
    ("raised", "refusal"),
    [
        (DataError("/data/ward-3/patient-4711.png", "cannot read image"), Refusal.DATA_ERROR),
        (
            FloatingPointError("task 'lesions': loss became nan at step 3 (ce 0.6931, box 12.5)"),
            Refusal.TRAINING_DIVERGED,
        ),
        (
            PrivacyBudgetSpent("site 'x': this round would spend epsilon 8.31 > target 8"),
            Refusal.PRIVACY_BUDGET_EXHAUSTED,
        ),
        (ConfigError("/srv/sites/x.toml", "tasks[0].path", "/data/x"), Refusal.CONFIGURATION_ERROR),
        (SecAggError("group encoder: only node 7 sent input"), Refusal.SECURE_AGGREGATION_REFUSED),
        (KeyError("/data/ward-3/patient-4711.png"), Refusal.INTERNAL_ERROR),
    ],
)
def test_every_exception_leaves_as_its_class_only(
    raised, refusal, demo_sites, monkeypatch, site_log
) -> None:
    def failing(context, message):
        raise raised

    monkeypatch.setattr(app_module, "site_runner", failing)
    context = Context(1, 7, {SITE_CONFIG_NODE_KEY: str(demo_sites[3])}, RecordDict(), {})
    for kind in ("train", "evaluate"):
        reply = as_flower_delivers(ask(kind, 7, {}, 2), context)
        assert reply.has_error() and reply.error.reason == refusal.value
    assert str(raised).strip("'") in "\n".join(site_log())


def test_an_exception_raised_from_another_keeps_the_class_of_its_cause(
    demo_sites, monkeypatch
) -> None:
    def failing(context, message):
        try:
            raise DataError("/data/ward-3/patient-4711.png", "cannot read image")
        except DataError as exc:
            raise RuntimeError(f"a loader worker failed: {exc}") from exc

    monkeypatch.setattr(app_module, "site_runner", failing)
    context = Context(1, 7, {SITE_CONFIG_NODE_KEY: str(demo_sites[3])}, RecordDict(), {})
    reply = as_flower_delivers(ask("train", 7, {}, 1), context)
    assert reply.error.reason == Refusal.DATA_ERROR.value


def test_a_query_of_a_site_without_a_readable_file_leaves_no_path(tmp_path) -> None:
    missing = tmp_path / "hospital-secret-ward" / "site.toml"
    context = Context(1, 7, {SITE_CONFIG_NODE_KEY: str(missing)}, RecordDict(), {})
    query = Message(RecordDict(), dst_node_id=7, message_type="query")
    reply = as_flower_delivers(query, context)
    assert reply.error.reason == Refusal.CONFIGURATION_ERROR.value


def test_a_handlers_own_words_are_cut_to_their_class(site_log) -> None:
    """A protocol stage asked out of order: whether the handler raises or answers with an
    error reply in words of its own, only the class leaves."""
    context = Context(1, 7, {}, RecordDict(), {})
    content = RecordDict({secagg.RECORD: ConfigRecord({secagg.ACTIVE: [7], secagg.DEAD: []})})
    unmask = Message(content, dst_node_id=7, message_type=secagg.UNMASK_TYPE)
    reply = as_flower_delivers(unmask, context)
    assert reply.error.reason == Refusal.SECURE_AGGREGATION_REFUSED.value
    assert any("asked after" in line for line in site_log())  # the words stayed here
    for text, refusal in [(f"data error: {LABEL}", Refusal.DATA_ERROR),
                          ("cannot open /data/x.png", Refusal.INTERNAL_ERROR)]:  # fmt: skip
        assert refusal_reply(unmask, text).error.reason == refusal.value


def test_a_dp_sites_evaluation_reply_counts_the_expected_examples(
    demo_sites, tmp_path, site_log
) -> None:
    """The count a training reply sends (its expected examples), not the validation
    set's size."""
    state = tmp_path / "state"
    site_file = own_site(demo_sites[3], state, privacy=True)
    settings = RunSettings(local_steps=2, num_server_rounds=2, state_root=str(tmp_path / "runs"))
    node = {SITE_CONFIG_NODE_KEY: str(site_file)}
    context = Context(1, 7, node, RecordDict(), settings.to_run_config())
    runs = cached_runs(str(site_file), site_file.stat().st_mtime)
    exact = sum(len(r.data.splits.get("val", [])) for r in runs)
    expected = expected_examples(runs, settings.local_steps)
    assert exact != expected  # else the test could not tell them apart
    shared = SiteRunner(load_site_config(demo_sites[3]), settings).shared_state()

    evaluated = client_app(ask("evaluate", 7, shared, 1), context)
    assert not evaluated.has_error()
    assert evaluated.content[wire.METRICS][wire.NUM_EXAMPLES] == expected
    line = next(line for line in site_log() if "round 1: evaluated" in line)
    assert f"on {expected} validation" not in line  # the site's log does not misstate it


def test_without_dp_the_evaluation_count_is_the_validation_size(demo_sites, tmp_path) -> None:
    site_file = own_site(demo_sites[3], tmp_path / "state")
    settings = RunSettings(local_steps=1, seed=1, state_root=str(tmp_path / "runs"))
    runner = SiteRunner(load_site_config(site_file), settings)
    _, count = runner.evaluate_round(runner.shared_state(), 1)
    assert count == sum(len(r.data.splits.get("val", [])) for r in runner.runs)


# -- the run's settings: what the sites are given, what is written down -------------------

SITES = {11: ("a", ("segmentation",), 10), 22: ("b", ("segmentation",), 30)}


def server_paths(tmp_path: Path) -> dict[str, str]:
    return {
        "out_dir": str(tmp_path / "coordinator-out"),
        "state_root": "/srv/coordinator/site-state",
        "site_configs": "/srv/hospital-b/site.toml,/srv/hospital-c/site.toml",
    }


def test_checkpoints_report_and_model_card_hold_no_uri_nor_paths(tmp_path) -> None:
    paths = server_paths(tmp_path)
    settings = RunSettings.of(
        num_server_rounds=1, tracking="none", tracking_uri=SECRET_URI, **paths
    )
    out = Path(settings.out_dir)
    run_federation(ScriptedGrid(SITES), settings)
    export = export_checkpoint(out / GLOBAL_CHECKPOINT, tmp_path / "card",
                               report=out / "report.json")  # fmt: skip
    written = {
        "checkpoint metadata": (out / GLOBAL_CHECKPOINT / "checkpoint.json").read_text(),
        "server state": "".join(p.read_text() for p in (out / SERVER_STATE).glob("*.json")),
        "report": (out / "report.json").read_text(),
        "model card": (export.folder / "README.md").read_text(),
        "model card json": (export.folder / "model_card.json").read_text(),
    }
    for what, text in written.items():
        assert "secret" not in text and "mlflow.example.org" not in text, what
        for path in paths.values():
            assert path not in text, (what, path)
        assert "/srv/" not in text, what
    meta = json.loads(written["checkpoint metadata"])["meta"]["settings"]
    assert meta["num-server-rounds"] == 1 and meta["strategy"] == "fedavg"  # what a reader needs
    card = json.loads(written["model card json"])
    assert card["training"]["rounds"] == 1 and card["training"]["strategy"] == "fedavg"
