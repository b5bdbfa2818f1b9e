"""`--init`: a federation (and `pretrain`) that starts from weights given, not a seeded init.

The first round's weights are read where the sites get them: the messages of an in-process
federation with the real ClientApp (``ClientAppGrid``); bad sources are refused by the
commands with exit 2 before anything starts.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from federation import wire
from federation.settings import RunSettings
from server.federation import initial_weights
from server.state import GLOBAL_CHECKPOINT
from tests.federation.inprocess import federate, settings_for
from tests.helpers import assert_group_equal, write_source
from umedpt import contract
from umedpt.checkpoint import load_state, read_meta
from umedpt.export.exporter import export_checkpoint
from umedpt.export.model_card import CARD_JSON
from umedpt_fl.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny checkpoint with a classification block, and its timm export."""
    folder, model = write_source(tmp_path_factory.mktemp("warm") / "checkpoint")
    export = folder.parent / "export"
    export_checkpoint(folder, export)
    return folder, export, model.state_dict()


def sent_to_train(grid, server_round: int) -> dict[int, dict[str, torch.Tensor]]:
    """What each site was sent to train on in ``server_round``, by node."""
    sent = {}
    for message in grid.sent:
        content = message.content
        if (
            message.metadata.message_type == "train"
            and content[wire.CONFIG][wire.SERVER_ROUND] == server_round
        ):
            arrays = content[wire.SHARED_ARRAYS].to_torch_state_dict()
            sent[message.metadata.dst_node_id] = arrays
    return sent


def test_the_coordinators_initial_weights_are_the_sources(source) -> None:
    folder, _, trained = source
    seeded = initial_weights(RunSettings(share_blocks=True)).to_torch_state_dict()
    warm = initial_weights(RunSettings(share_blocks=True, init=str(folder))).to_torch_state_dict()
    assert warm.keys() == seeded.keys()
    assert_group_equal(warm, trained, "encoder")
    assert_group_equal(warm, trained, "blocks.classification")
    assert_group_equal(warm, seeded, "blocks.segmentation")  # not in the source: seeded
    alone = initial_weights(RunSettings(init=str(folder))).to_torch_state_dict()
    assert {contract.group_of(k) for k in alone} == {"encoder"}  # blocks stay home
    assert_group_equal(alone, trained, "encoder")


def test_sites_get_the_exported_encoder_in_round_1_and_the_run_records_it(
    demo_sites, source, tmp_path
) -> None:
    folder, export, trained = source
    out = tmp_path / "run"
    settings = settings_for(
        [demo_sites[3]], out, num_server_rounds=1, share_blocks=True, init=str(export)
    )
    report, grid = federate(settings)
    assert report["status"] == "completed"
    (sent,) = sent_to_train(grid, 1).values()  # the classification site's
    assert {contract.group_of(k) for k in sent} == {"encoder", "blocks.classification"}
    assert_group_equal(sent, trained, "encoder")
    assert_group_equal(sent, trained, "blocks.classification")
    # recorded without the path: report.json, the global checkpoint and the model card
    recorded = report["config"]["init-source"]
    assert recorded.startswith("timm-folder (encoder, blocks.classification; sha256 ")
    assert "init" not in report["config"]
    assert str(export) not in (out / "report.json").read_text()
    assert read_meta(out / GLOBAL_CHECKPOINT)["settings"]["init-source"] == recorded
    export_checkpoint(out / GLOBAL_CHECKPOINT, tmp_path / "card")
    card = json.loads((tmp_path / "card" / CARD_JSON).read_text())
    assert card["training"]["init"] == recorded
    assert f"Initial weights: `{recorded}`" in (tmp_path / "card" / "README.md").read_text()

    # resumed: the saved state wins over another --init, and the record stays the first one
    other, _ = write_source(tmp_path / "other", seed=5)
    after_round_1 = load_state(out / GLOBAL_CHECKPOINT)
    resumed, grid = federate(replace(settings, num_server_rounds=2, resume=True, init=str(other)))
    assert resumed["config"]["init-source"] == recorded
    (sent_again, *_) = sent_to_train(grid, 2).values()
    assert_group_equal(sent_again, after_round_1, "encoder")
    assert not torch.equal(
        sent_again["encoder.model.patch_embed.proj.weight"],
        load_state(other, ["encoder"])["encoder.model.patch_embed.proj.weight"],
    )


def simulate_args(demo_sites, tmp_path, *extra: str) -> list[str]:
    return [
        "simulate", "--site", str(demo_sites[3]), "--out", str(tmp_path / "run"),
        "--rounds", "1", "--local-steps", "1", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("init", "said"),
    [
        ("{tmp}/nowhere", "nowhere: no such folder"),
        ("{tmp}/garbage", "unreadable"),
        ("{checkpoint}", "does not fit this run's model (resnet18)"),
        ("timm:", "say which timm model"),
    ],
)
def test_simulate_refuses_a_bad_init_before_anything_starts(
    demo_sites, source, tmp_path, init, said
) -> None:
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "checkpoint.json").write_text("not json")
    init = init.format(tmp=tmp_path, checkpoint=source[0])
    extra = ["--preset", "resnet18"] if init == str(source[0]) else []
    result = runner.invoke(app, simulate_args(demo_sites, tmp_path, "--init", init, *extra))
    assert result.exit_code == 2, result.output
    assert said in " ".join(result.output.split())
    assert not (tmp_path / "run" / "report.json").exists()


def test_pretrain_starts_from_the_source(demo_sites, source, tmp_path) -> None:
    """With a learning rate of 0 the weights stay where they started: the source's."""
    folder, _, trained = source
    out = tmp_path / "pretrain"
    args = ["pretrain", "--site", str(demo_sites[3]), "--out", str(out), "--steps", "1"]
    result = runner.invoke(app, [*args, "--device", "cpu", "--lr", "0", "--init", str(folder)])
    assert result.exit_code == 0, result.output
    state = load_state(out / "checkpoint")
    assert_group_equal(state, trained, "encoder")
    assert_group_equal(state, trained, "blocks.classification")
    config = read_meta(out / "checkpoint")["config"]
    assert config["init"].startswith("checkpoint (encoder, blocks.classification; sha256 ")
    bad = runner.invoke(app, [*args, "--preset", "resnet18", "--init", str(folder)])
    assert bad.exit_code == 2 and "does not fit" in bad.output


@pytest.mark.slow
def test_a_simulation_starts_from_a_relative_init_and_records_it(
    demo_sites, source, tmp_path
) -> None:
    """`simulate` as a user runs it (Ray, apps in other processes): the init path, relative
    to where the command ran, reaches the ServerApp; the run records what it loaded."""
    from tests.federation.simulation import simulate

    relative = os.path.relpath(source[1], Path.cwd())
    result = simulate(tmp_path / "sim", [demo_sites[3]], "--rounds", "1", "--init", relative)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "initial weights from --init: timm-folder (encoder; sha256 " in output
    report = json.loads((tmp_path / "sim" / "report.json").read_text())
    assert report["config"]["init-source"].startswith("timm-folder (encoder; sha256 ")
    assert result.process.all_gone()
