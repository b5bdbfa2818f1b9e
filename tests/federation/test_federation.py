"""The federation end to end in-process: real ClientApp, real ServerApp logic, no Ray."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from federation import wire
from server.federation import RunExistsError
from server.state import GLOBAL_CHECKPOINT
from strategies import RoundFailedError
from tests.federation.fakes import ClientAppGrid
from tests.federation.inprocess import federate, settings_for
from umedpt import contract
from umedpt.checkpoint import load_model, load_weights, read_header, read_meta
from umedpt.config import load_site_config
from umedpt.model import UMedPTModel
from umedpt.models.presets import PRESETS
from umedpt.pretrain import load_runs
from umedpt.training.trainer import MultiTaskTrainer, TrainConfig


def global_weights(out: Path) -> dict[str, torch.Tensor]:
    """The federation's final weights, read with ``load_model`` from the folder alone."""
    return load_model(out / GLOBAL_CHECKPOINT).state_dict()


def assert_same_global_weights(a_out: Path, b_out: Path) -> None:
    """Two runs' final weights, bit for bit."""
    a, b = global_weights(a_out), global_weights(b_out)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def three_sites(demo_sites, tmp_path_factory) -> tuple[dict, ClientAppGrid, Path]:
    """Classification, segmentation and detection sites, two rounds, blocks shared (the
    non-default routing: each block only to the sites that use it; shared by tests)."""
    out = tmp_path_factory.mktemp("three-sites")
    report, grid = federate(settings_for(demo_sites[:3], out, share_blocks=True))
    return report, grid, out


def test_only_shared_weights_and_scalars_reach_the_server(three_sites) -> None:
    report, grid, _ = three_sites
    assert report["status"] == "completed"
    sent_keys = {}
    for message in grid.sent:
        if wire.SHARED_ARRAYS in message.content:
            sent_keys[message.metadata.dst_node_id] = list(
                message.content[wire.SHARED_ARRAYS].keys()
            )
    assert grid.received
    for reply in grid.received:
        content = reply.content
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        for record in content.array_records.values():
            keys = list(record.keys())
            assert not [k for k in keys if not contract.is_shared(k)], (
                f"head weights leaked: {keys}"
            )
            assert keys == sent_keys[reply.metadata.src_node_id]
        for record in content.metric_records.values():
            assert all(isinstance(v, int | float) for v in record.values())
        for name, record in content.config_records.items():
            assert name == wire.SITE_INFO
            assert set(record.keys()) == {
                wire.SITE_NAME,
                wire.BLOCKS_USED,
                wire.TASKS,
                wire.EXAMPLES_PER_STEP,
            }
    # and the blocks went only to the sites that use them
    detection_nodes = {
        n for n, keys in sent_keys.items() if any(k.startswith("blocks.detection.") for k in keys)
    }
    assert len(detection_nodes) == 1


def test_outputs_report_plot_checkpoint_and_site_heads(three_sites) -> None:
    _, _, out = three_sites
    saved = json.loads((out / "report.json").read_text())
    assert saved["status"] == "completed" and len(saved["rounds"]) == 2
    assert set(saved["sites"]) == {"clinic-a", "clinic-b", "clinic-c"}
    first = saved["rounds"][0]
    assert set(first["eval_metrics"]) == set(saved["sites"])
    assert all(v > 0 for v in first["bytes_sent"].values())
    assert first["bytes_received"] == first["bytes_sent"]
    assert first["bytes_sent_for_evaluation"] == first["bytes_sent"]
    assert saved["global_shared_bytes"] >= max(first["bytes_sent"].values()) * 0.99
    assert (out / "metrics.png").stat().st_size > 1000
    weights = global_weights(out)
    assert any(k.startswith("encoder.") for k in weights) and not any(
        k.startswith("heads.") for k in weights
    )
    assert read_meta(out / GLOBAL_CHECKPOINT)["kind"] == "federated"
    heads = list((out / "sites").glob("*/runs/*/latest-heads/heads.*.safetensors"))
    assert len(heads) == 3
    latest = read_header(next((out / "sites").glob("clinic-a/runs/*/latest-heads")))
    assert latest["groups"] == ["heads.lesions"]
    assert latest["tasks"]["lesions"]["type"] == "classification"


def test_one_site_one_round_equals_local_training(demo_sites, tmp_path) -> None:
    site_file = demo_sites[1]
    settings = settings_for(
        [site_file], tmp_path / "run", num_server_rounds=1, local_steps=2, share_blocks=True
    )
    federate(settings)
    federated = global_weights(tmp_path / "run")

    site = load_site_config(site_file)
    model = UMedPTModel(PRESETS.get("tiny"), site.tasks, seed=settings.seed)
    config = TrainConfig(seed=settings.seed, schedule=settings.schedule, total_steps=2)
    trainer = MultiTaskTrainer(model, load_runs(site.tasks), config)
    trainer.train_steps(2)
    local = model.shared_state_dict()
    assert set(local) <= set(federated)
    for key, value in local.items():
        assert torch.allclose(value, federated[key], atol=1e-6), key


def test_blocks_kept_at_home_on_one_schedule_equal_local_training(demo_sites, tmp_path) -> None:
    """Without shared blocks only the encoder travels; each site restores its own blocks,
    heads and optimizer state, and the cosine schedule runs over the whole federation:
    one site, 3 rounds x 1 step is then exactly 3 local steps."""
    site_file = demo_sites[1]
    settings = settings_for(
        [site_file], tmp_path / "run", num_server_rounds=3, share_blocks=False, schedule="cosine"
    )
    report, grid = federate(settings)
    assert report["status"] == "completed"
    for message in grid.sent:
        if wire.SHARED_ARRAYS in message.content:
            keys = message.content[wire.SHARED_ARRAYS].keys()
            assert {contract.group_of(k) for k in keys} == {contract.ENCODER}
    assert read_header(tmp_path / "run" / GLOBAL_CHECKPOINT)["groups"] == [contract.ENCODER]
    (home,) = (tmp_path / "run" / "sites").glob("*/runs/*/latest-heads")
    assert read_header(home)["groups"] == ["blocks.segmentation", "heads.blobs"]

    site = load_site_config(site_file)
    model = UMedPTModel(PRESETS.get("tiny"), site.tasks, seed=settings.seed)
    config = TrainConfig(seed=settings.seed, schedule="cosine", total_steps=3)
    MultiTaskTrainer(model, load_runs(site.tasks), config).train_steps(3)
    federated = UMedPTModel(PRESETS.get("tiny"), site.tasks)
    load_weights(federated, tmp_path / "run" / GLOBAL_CHECKPOINT, groups=[contract.ENCODER])
    load_weights(federated, home, groups=["blocks.segmentation", "heads.blobs"])
    expected, got = model.state_dict(), federated.state_dict()
    for key in expected:
        assert torch.allclose(expected[key], got[key], atol=1e-6), key


def test_resume_matches_an_uninterrupted_run(demo_sites, tmp_path) -> None:
    sites = [demo_sites[1], demo_sites[3]]  # segmentation + classification
    straight = settings_for(sites, tmp_path / "straight", num_server_rounds=3)
    federate(straight)

    stopped = settings_for(sites, tmp_path / "stopped", num_server_rounds=2)
    federate(stopped)
    with pytest.raises(RunExistsError, match="--resume"):
        federate(replace(stopped, num_server_rounds=3))
    report, _ = federate(replace(stopped, num_server_rounds=3, resume=True))
    assert [r["round"] for r in report["rounds"]] == [1, 2, 3]

    assert_same_global_weights(tmp_path / "straight", tmp_path / "stopped")


class _Killed(BaseException):
    """The coordinator's process dying mid-round: no handler of the run may catch it."""


def test_a_run_killed_inside_a_round_past_the_warm_up_resumes_bit_identical(
    demo_sites, tmp_path
) -> None:
    # 8 steps a round against the tiny preset's 20 warm-up steps: round 3 (steps 16-23)
    # runs past the warm-up, on the cosine schedule whose horizon is the whole run's.
    sites = [demo_sites[1], demo_sites[3]]
    straight = settings_for(sites, tmp_path / "straight", num_server_rounds=3, local_steps=8)
    federate(straight)

    def kill_in_round_3(node: int, message) -> bool:
        # the first site has trained round 3 and saved its state; then the process dies
        if node == 101 and message.metadata.message_type == "train":
            if message.content[wire.CONFIG][wire.SERVER_ROUND] == 3:
                raise _Killed
        return False

    killed = replace(straight, out_dir=str(tmp_path / "killed"), state_root=str(tmp_path / "ks"))
    with pytest.raises(_Killed):
        federate(killed, failing=kill_in_round_3)
    # the site that trained round 3 before the kill saved that round's state
    assert sorted(p.name for p in (tmp_path / "ks").glob("*/runs/*/round-00003")) == ["round-00003"]
    report, _ = federate(replace(killed, resume=True))
    assert [r["round"] for r in report["rounds"]] == [1, 2, 3]

    assert_same_global_weights(tmp_path / "straight", tmp_path / "killed")


def test_a_run_resumes_only_with_what_travels_unchanged(demo_sites, tmp_path) -> None:
    settings = settings_for([demo_sites[3]], tmp_path / "run", num_server_rounds=1)
    federate(settings)
    changed = replace(settings, num_server_rounds=2, resume=True, share_blocks=True)
    with pytest.raises(RunExistsError, match="share-blocks False \\(now True\\)"):
        federate(changed)


def test_a_site_that_vanishes_does_not_kill_the_round(demo_sites, tmp_path) -> None:
    def vanish(node, message):
        return node == 101 and message.metadata.message_type == "train"

    settings = settings_for([demo_sites[3], demo_sites[1]], tmp_path / "run", num_server_rounds=1)
    report, _ = federate(settings, failing=vanish)
    assert report["status"] == "completed"
    rejected = [list(r) for r in report["rounds"][0]["rejected"]]
    assert rejected == [["clinic-b", "training: no reply before the round timeout"]]


def test_too_few_sites_fail_the_run_and_say_so(demo_sites, tmp_path) -> None:
    sites = [demo_sites[3], demo_sites[1]]
    settings = settings_for(sites, tmp_path / "run", num_server_rounds=1, min_sites=2)
    with pytest.raises(RoundFailedError, match="fewer than 2 sites"):
        federate(
            settings,
            failing=lambda node, message: node == 100 and message.metadata.message_type == "train",
        )
    assert json.loads((tmp_path / "run" / "report.json").read_text())["status"] == "failed"


def test_site_state_lives_on_disk_and_survives_a_restart(three_sites) -> None:
    report, grid, out = three_sites
    run_key = report["config"]["run-key"]
    site_dir = out / "sites" / "clinic-a" / "runs" / run_key
    assert sorted(p.name for p in site_dir.glob("round-*")) == ["round-00001", "round-00002"]
    # the ClientApp kept nothing in Flower's in-memory node state
    assert all(len(ctx.state) == 0 for ctx in grid.contexts.values())
    # round 2 started from the heads saved in round 1
    train_metrics = report["rounds"][1]["train_metrics"]["clinic-a"]
    assert train_metrics["restored-round"] == 1.0


def test_mismatched_site_model_is_reported_with_the_site_name(demo_sites, tmp_path) -> None:
    from client.site import SiteError, SiteRunner

    settings = settings_for(demo_sites[:1], tmp_path / "run")
    runner = SiteRunner(load_site_config(demo_sites[0]), settings)
    shared = runner.shared_state()
    shared["encoder.extra"] = torch.zeros(1)
    with pytest.raises(SiteError, match="site 'clinic-a'.*unexpected"):
        runner.load_shared(shared)
    bad_shape = runner.shared_state()
    key = next(iter(bad_shape))
    bad_shape[key] = torch.zeros(3)
    with pytest.raises(SiteError, match="has shape"):
        runner.load_shared(bad_shape)


def test_an_unrecorded_in_process_run_keeps_no_messages_and_trains_the_same(
    demo_sites, tmp_path
) -> None:
    """Benchmarks run long federations without keeping every message (each holds weights)."""
    runs = {}
    for record in (True, False):
        out = tmp_path / str(record)
        report, grid = federate(
            settings_for(demo_sites[3:], out, num_server_rounds=2), record_messages=record
        )
        assert report["status"] == "completed"
        assert bool(grid.sent) is record and bool(grid.received) is record
        runs[record] = global_weights(out)
    for key, value in runs[True].items():
        torch.testing.assert_close(runs[False][key], value, rtol=0, atol=0)
