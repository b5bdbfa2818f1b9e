"""`umedpt-fl export`: the encoder loads in plain timm with the project's feature maps,
and the model card states what the checkpoint, the run's report and evaluations record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import yaml
from typer.testing import CliRunner

from tests.helpers import make_task
from umedpt.checkpoint import load_model, save_checkpoint, save_weights
from umedpt.export.provenance import NOT_DISCLOSED, TRAIN_IMAGES
from umedpt.export.timm_folder import nchw_features
from umedpt.model import UMedPTModel
from umedpt.models.presets import model_config
from umedpt_fl.cli import app

runner = CliRunner()


def seeded_model(preset: str, tasks=(), seed: int = 3) -> UMedPTModel:
    """A model with every encoder tensor perturbed: equal initial values (norms at 1/0)
    cannot hide a mix-up of keys."""
    model = UMedPTModel(
        model_config(preset), list(tasks), extra_blocks=("classification",), seed=seed
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.encoder.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.05 * torch.randn(tensor.shape, generator=generator))
    return model.eval()


def fake_report(sites_dp: dict[str, float | None]) -> dict:
    """A report.json as the server writes it: two rounds, per-site metrics, privacy."""
    sites, train, evaluated, privacy = {}, {}, {}, {}
    for i, (site, epsilon) in enumerate(sites_dp.items()):
        task = f"task-{i}"
        sites[site] = {"site-name": site, "tasks": f"{task}:classification:accuracy"}
        train[site] = {"num-examples": 40.0}
        if epsilon is None:
            train[site][f"{task}/{TRAIN_IMAGES}"] = 100.0 + i
        else:
            train[site].update({"dp-epsilon": epsilon, "dp-delta": 1e-5})
            privacy[site] = {"epsilon": epsilon, "delta": 1e-5, "round": 2}
        evaluated[site] = {f"{task}/accuracy": 0.5 + 0.1 * i}
    rounds = [{"round": r, "train_metrics": train, "eval_metrics": evaluated} for r in (1, 2)]
    report = {"status": "completed", "config": {}, "sites": sites, "rounds": rounds}
    return {**report, "privacy": privacy} if privacy else report


def federated_checkpoint(run: Path, model: UMedPTModel, report: dict | None) -> Path:
    """A federation's ``global/`` folder (shared weights only) beside its report.json."""
    meta = {
        "kind": "federated",
        "rounds": 2,
        "settings": {
            "num-server-rounds": 2,
            "strategy": "fedmedian",
            "weighting": "equal",
            "site-configs": "/secret/path/a.toml",
        },
    }
    folder = save_weights(run / "global", model.shared_state_dict(), model.config, meta=meta)
    if report is not None:
        (run / "report.json").write_text(json.dumps(report))
    return folder


def said(output: str) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(output.split())


def export(*args: str | Path) -> str:
    result = runner.invoke(app, ["export", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def front_matter(readme: str) -> dict:
    _, header, _ = readme.split("---\n", 2)
    return yaml.safe_load(header)


def assert_same_features(model: UMedPTModel, loaded: torch.nn.Module, size: int) -> None:
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.encoder(images)
        got = nchw_features(loaded.eval(), images, len(expected))
    assert len(got) == len(expected) == 4
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a)


def test_tiny_encoder_loads_in_plain_timm_with_the_projects_feature_maps(tmp_path) -> None:
    model = seeded_model("tiny")
    checkpoint = federated_checkpoint(tmp_path / "run", model, fake_report({"a": None}))
    out = tmp_path / "hub"
    export(checkpoint, "--out", out)

    assert {"config.json", "model.safetensors", "README.md", "model_card.json"} <= {
        p.name for p in out.iterdir()
    }
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "swin_tiny_patch4_window7_224"
    assert config["num_classes"] == 0
    assert config["model_args"]["embed_dim"] == 48
    assert config["pretrained_cfg"]["input_size"] == [3, 64, 64]
    assert config["pretrained_cfg"]["mean"] == list(timm.data.IMAGENET_DEFAULT_MEAN)

    loaded = timm.create_model(f"local-dir:{out}", pretrained=True, features_only=True)
    assert_same_features(model, loaded, 64)
    overlay = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=True,
        features_only=True,
        pretrained_cfg_overlay={"file": str(out / "model.safetensors")},
        **dict(model.config.encoder_kwargs),
    )
    assert_same_features(model, overlay, 64)
    # The project's own format beside it: encoder and shared blocks.
    blocks = load_model(out / "umedpt-blocks")
    assert set(blocks.blocks) == {"classification"}
    assert "/secret/path" not in (out / "umedpt-blocks" / "checkpoint.json").read_text()

    card = json.loads((out / "model_card.json").read_text())
    assert card["model"]["untrained_keys"] == ["norm.bias", "norm.weight"]
    assert "final norm is untrained" in (out / "README.md").read_text()


def test_resnet18_pretrain_checkpoint_exports_with_its_image_counts(tmp_path) -> None:
    task = make_task("xray", "classification")
    model = seeded_model("resnet18", [task])
    meta = {
        "kind": "centralized",
        "site_files": {"xray": "/sites/hospital-a.toml"},
        "config": {"steps": 10, "epochs": 3, "seed": 0},
        "step": 10,
        "images": {"xray": 321},
        "val": {"xray": {"balanced_accuracy": 0.75}},
    }
    checkpoint = save_checkpoint(tmp_path / "pretrain" / "checkpoint", model, meta=meta)
    out = tmp_path / "hub"
    export(checkpoint, "--out", out)

    loaded = timm.create_model(f"local-dir:{out}", pretrained=True, features_only=True)
    assert_same_features(model, loaded, 64)
    card = json.loads((out / "model_card.json").read_text())
    assert card["model"]["input_size"] == [3, 64, 64]  # the task's image size
    assert card["model"]["untrained_keys"] == []
    assert card["training"] == {**card["training"], "kind": "centralized", "steps": 10}
    (site,) = card["sites"]
    assert site["name"] == "hospital-a"
    assert site["tasks"][0]["train_images"] == 321
    assert site["tasks"][0]["last_validation"] == 0.75


def test_the_card_states_sites_rounds_strategy_privacy_and_evaluations(tmp_path) -> None:
    model = seeded_model("tiny")
    report = fake_report({"hospital-a": None, "hospital-b": 3.5})
    checkpoint = federated_checkpoint(tmp_path / "run", model, report)
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    summary = {
        "target": "breast-ultrasound",
        "primary_metric": "auroc",
        "protocol": {"seeds": 2},
        "rows": [
            {
                "encoder": "exported",
                "mode": "frozen",
                "fraction": 10.0,
                "mean": 0.81,
                "sd": 0.02,
                "n": 2,
            },
            {
                "encoder": "imagenet",
                "mode": "frozen",
                "fraction": 10.0,
                "mean": 0.74,
                "sd": 0.03,
                "n": 2,
            },
        ],
        "labels_saved": [{"encoder": "exported", "mode": "frozen", "fraction": 50.0}],
    }
    (evaluation / "summary.json").write_text(json.dumps({**summary, "target_file": "/secret/path"}))
    out = tmp_path / "hub"
    export(checkpoint, "--out", out, "--evaluation", evaluation)

    readme = (out / "README.md").read_text()
    meta = front_matter(readme)
    assert meta["library_name"] == "timm"
    assert meta["license"] == "other"
    assert meta["pipeline_tag"] == "image-feature-extraction"
    facts = meta["umedpt_fl"]
    assert facts["training"]["rounds"] == 2
    assert facts["training"]["strategy"] == "fedmedian"
    assert facts["sites"]["hospital-a"]["epsilon"] is None
    assert facts["sites"]["hospital-b"]["epsilon"] == 3.5
    assert "| hospital-a | task-0 | classification | 100 |" in readme
    assert f"| hospital-b | task-1 | classification | {NOT_DISCLOSED} |" in readme
    assert "| exported | frozen | 10 | 0.8100 ± 0.0200 | 2 |" in readme
    assert "not measured" not in readme

    card = json.loads((out / "model_card.json").read_text())
    assert card["training"]["weighting"] == "equal"
    assert card["evaluations"] == [summary]
    sites = {s["name"]: s for s in card["sites"]}
    assert sites["hospital-b"]["privacy"]["epsilon"] == 3.5
    assert sites["hospital-b"]["tasks"][0]["train_images"] == NOT_DISCLOSED
    assert card["unknown"] == []
    assert "/secret/path" not in (out / "model_card.json").read_text() + readme


def test_without_report_or_evaluation_the_card_says_what_is_unknown(tmp_path) -> None:
    checkpoint = federated_checkpoint(tmp_path / "run", seeded_model("tiny"), report=None)
    out = tmp_path / "hub"
    export(checkpoint, "--out", out)
    export(checkpoint, "--out", out)  # an earlier export is replaced
    readme = (out / "README.md").read_text()
    assert "transfer to new tasks was not measured" in readme
    assert "no report.json of the run was found" in readme
    assert front_matter(readme)["umedpt_fl"]["training"]["strategy"] == "fedmedian"


def test_a_folder_that_is_not_a_checkpoint_exits_2_naming_it(tmp_path) -> None:
    stray = tmp_path / "not-a-checkpoint"
    stray.mkdir()
    result = runner.invoke(app, ["export", str(stray), "--out", str(tmp_path / "hub")])
    assert result.exit_code == 2
    assert "not-a-checkpoint" in said(result.output)
    assert "not a umedpt-fl checkpoint" in said(result.output)
    assert not (tmp_path / "hub").exists()
    result = runner.invoke(app, ["export", str(tmp_path / "gone"), "--out", str(tmp_path / "hub")])
    assert result.exit_code == 2 and "gone: no such checkpoint folder" in said(result.output)


def test_heads_only_folders_and_foreign_outputs_are_refused(tmp_path) -> None:
    model = seeded_model("tiny", [make_task("xray", "classification")])
    heads = save_checkpoint(tmp_path / "round-00002", model, groups=["heads.xray"])
    result = runner.invoke(app, ["export", str(heads), "--out", str(tmp_path / "hub")])
    assert result.exit_code == 2 and "holds no encoder" in said(result.output)

    checkpoint = federated_checkpoint(tmp_path / "run", model, report=None)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    result = runner.invoke(app, ["export", str(checkpoint), "--out", str(busy)])
    assert result.exit_code == 2 and "not an earlier export" in said(result.output)
    assert (busy / "notes.txt").read_text() == "keep me"
    result = runner.invoke(
        app,
        ["export", str(checkpoint), "--out", str(tmp_path / "x"), "--evaluation", str(tmp_path)],
    )
    assert result.exit_code == 2 and "no summary.json" in said(result.output)


@pytest.mark.parametrize("private", [False, True])
def test_a_site_reports_its_image_counts_unless_it_trains_under_dp(tmp_path, private) -> None:
    from client.site import SiteRunner
    from federation.settings import RunSettings
    from umedpt.config import load_site_config
    from umedpt.data.demo import write_demo_federation

    site_file = write_demo_federation(tmp_path / "demo", images_per_site=20)[3]
    if private:
        text = site_file.read_text().replace(
            "[[tasks]]",
            "[privacy]\ntarget_epsilon = 8.0\ntarget_delta = 1e-5\nmax_grad_norm = 1.0\n\n"
            "[[tasks]]",
            1,
        )
        site_file.write_text(text)
    settings = RunSettings(local_steps=1, num_server_rounds=1, state_root=str(tmp_path / "s"))
    site = SiteRunner(load_site_config(site_file), settings)
    outcome = site.train_round(site.shared_state(), 1)
    counts = {k: v for k, v in outcome.metrics.items() if k.endswith(f"/{TRAIN_IMAGES}")}
    if private:
        assert counts == {}
    else:
        (run,) = site.runs
        assert counts == {f"{run.config.name}/{TRAIN_IMAGES}": len(run.data["train"])}
