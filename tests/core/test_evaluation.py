"""`umedpt-fl evaluate`: stratified subsets, encoder specs, the grid, resume and the summary."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import make_task, synthetic_samples
from umedpt.checkpoint import save_checkpoint
from umedpt.data.samples import Sample
from umedpt.evaluation import (
    EncoderSpecError,
    EvalProtocol,
    EvaluationMismatch,
    Target,
    parse_encoders,
    run_evaluation,
    stratified_subset,
)
from umedpt.evaluation.probe import (
    CellTrainer,
    FeatureBank,
    PooledPyramid,
    Probe,
    pooled_training_features,
)
from umedpt.evaluation.summary import labels_saved, render_markdown
from umedpt.model import UMedPTModel
from umedpt.models.blocks import ImageBlock
from umedpt.models.presets import model_config
from umedpt.tasks import TASK_TYPES, get_task_type
from umedpt_fl.cli import app

# Two frozen cells (features computed once), and one cell per mode: seconds, not minutes.
FROZEN = EvalProtocol(fractions=(50.0, 100.0), modes=("frozen",), seeds=1, max_steps=2,
                      min_steps=2, evals=1)  # fmt: skip
BOTH = EvalProtocol(fractions=(100.0,), seeds=1, max_steps=2, min_steps=2, evals=1)


def _labelled(counts: dict[int, int]) -> list[Sample]:
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    return [Sample(image, f"{c}-{i}", {"label": c}) for c, n in counts.items() for i in range(n)]


def _target(task_type: str, n_train: int = 8, n_val: int = 4, n_test: int = 4) -> Target:
    generator = torch.Generator().manual_seed(0)
    splits = {
        split: synthetic_samples(task_type, n, generator)
        for split, n in (("train", n_train), ("val", n_val), ("test", n_test))
    }
    return Target(make_task("target", task_type, batch_size=4), splits)


def _checkpoint(folder: Path, seed: int = 3) -> Path:
    config = model_config("tiny")
    model = UMedPTModel(config, [make_task("pre", "classification")], seed=seed)
    return save_checkpoint(folder, model, meta={"kind": "test"})


# -- subsets -------------------------------------------------------------------------------
def test_subset_keeps_class_proportions_and_every_class() -> None:
    samples = _labelled({0: 80, 1: 15, 2: 5})
    stratum = get_task_type("classification").stratum
    subset = stratified_subset(samples, 10.0, seed=0, stratum=stratum)
    counts = Counter(samples[i].targets["label"] for i in subset)
    assert len(subset) == 10
    assert counts == {0: 8, 1: 1, 2: 1}  # largest remainder, and no class left out
    assert stratified_subset(samples, 10.0, seed=0, stratum=stratum) == subset
    assert stratified_subset(samples, 10.0, seed=1, stratum=stratum) != subset
    assert stratified_subset(samples, 100.0, seed=4, stratum=stratum) == list(range(100))


def test_subset_strata_for_masks_and_boxes() -> None:
    for task_type in ("segmentation", "detection", "multilabel"):
        samples = synthetic_samples(task_type, 20, torch.Generator().manual_seed(0))
        stratum = get_task_type(task_type).stratum
        subset = stratified_subset(samples, 25.0, seed=2, stratum=stratum)
        assert len(subset) == 5 and len(set(subset)) == 5


# -- encoder specs -------------------------------------------------------------------------
def test_encoder_specs_add_the_random_baseline_and_load_weights(tmp_path) -> None:
    folder = _checkpoint(tmp_path / "run" / "global")
    specs = parse_encoders([str(folder)])
    assert [s.label for s in specs] == ["run/global", "random"]
    assert specs[1].config == specs[0].config
    loaded = specs[0].build().state_dict()
    expected = UMedPTModel(model_config("tiny"), [make_task("pre", "classification")], seed=3)
    for key, value in expected.encoder.state_dict().items():
        torch.testing.assert_close(loaded[key], value)
    fresh = specs[1].build().state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in expected.encoder.state_dict().items())


def test_encoder_spec_errors_name_the_problem(tmp_path, monkeypatch) -> None:
    with pytest.raises(EncoderSpecError, match="not a umedpt-fl checkpoint"):
        parse_encoders([str(tmp_path)])
    folder = _checkpoint(tmp_path / "a")
    with pytest.raises(EncoderSpecError, match="labels must be unique"):
        parse_encoders([f"x={folder}", f"x={folder}"])
    no_local_weights(monkeypatch, tmp_path)
    with pytest.raises(EncoderSpecError, match="no local pretrained weights"):
        parse_encoders(["imagenet:resnet18"])


def no_local_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Empty Hugging Face and torch hub caches, whatever this machine has cached."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


# -- the grid ------------------------------------------------------------------------------
@pytest.mark.parametrize("task_type", ["classification", "multilabel", "segmentation", "detection"])
def test_every_task_type_evaluates_frozen_and_finetuned(tmp_path, task_type) -> None:
    results = run_evaluation(_target(task_type), parse_encoders([]), BOTH, tmp_path)
    cells = results["cells"]
    assert len(cells) == 2  # random x (frozen, finetune) x 100% x 1 seed
    assert {c["subset_size"] for c in cells} == {8}
    metric = results["metric"]
    assert all(metric in c["metrics"] for c in cells)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {r["mode"] for r in summary["rows"]} == {"frozen", "finetune"}
    assert (tmp_path / "metric-vs-fraction.png").stat().st_size > 0


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_only_finetune_changes_the_encoder(mode) -> None:
    target = _target("classification")
    (spec,) = parse_encoders([])
    encoder = spec.build()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    probe = Probe(encoder, target.task, spec.config, seed=0)
    protocol = EvalProtocol(fractions=(100.0,), seeds=1, max_steps=3, min_steps=3, evals=1)
    trainer = CellTrainer(target.task, protocol, "balanced_accuracy", torch.device("cpu"))
    trainer.run(probe, mode, target.splits, range(8), seed=0, fraction=100.0,
                encoder_label="random")  # fmt: skip
    changed = [k for k, v in encoder.state_dict().items() if not torch.equal(before[k], v)]
    assert (changed == []) == (mode == "frozen")


def test_cached_features_and_their_targets_come_from_the_same_batch() -> None:
    """A task type whose training batches are random (masks) scores the same with and
    without the feature bank: both read ``collate_eval``'s fixed batch (review finding 6)."""
    target = _target("self-supervised")
    (spec,) = parse_encoders([])
    probe = Probe(spec.build(), target.task, spec.config, seed=0)
    cpu = torch.device("cpu")
    bank = FeatureBank.build(probe.encoder, target.task, {"val": target.splits["val"]}, cpu)
    trainer = CellTrainer(target.task, FROZEN, "reconstruction_score", cpu)
    torch.manual_seed(1)
    banked = trainer.score(probe, target.splits["val"], "val", bank)
    torch.manual_seed(2)
    direct = trainer.score(probe, target.splits["val"], "val", None)
    assert banked["masked_l1"] == pytest.approx(direct["masked_l1"], rel=1e-4)


def test_a_rerun_resumes_and_recomputes_a_lost_cell_identically(tmp_path) -> None:
    target = _target("classification")
    specs = parse_encoders([])
    first = run_evaluation(target, specs, BOTH, tmp_path)
    path = tmp_path / "results.json"
    saved = json.loads(path.read_text())
    lost = saved["cells"].pop(1)  # the finetune cell: the encoder trains too
    assert lost["mode"] == "finetune"
    path.write_text(json.dumps(saved))
    seen: list[tuple[int, int]] = []
    second = run_evaluation(
        target, specs, BOTH, tmp_path, on_cell=lambda d, t, r: seen.append((d, t))
    )
    assert seen == [(1, 2), (2, 2)]  # one cell found done, one trained again
    again = next(c for c in second["cells"] if c["mode"] == lost["mode"]
                 and c["fraction"] == lost["fraction"])  # fmt: skip
    assert again["metrics"] == lost["metrics"]  # the seed controls everything
    assert len(second["cells"]) == len(first["cells"])


def test_a_folder_of_another_protocol_is_refused(tmp_path) -> None:
    target = _target("classification")
    first = run_evaluation(target, parse_encoders([]), FROZEN, tmp_path)
    assert {c["subset_size"] for c in first["cells"]} == {4, 8}
    other = EvalProtocol(fractions=(50.0, 100.0), modes=("frozen",), seeds=1, max_steps=3,
                         min_steps=2, evals=1)  # fmt: skip
    with pytest.raises(EvaluationMismatch, match="another protocol"):
        run_evaluation(target, parse_encoders([]), other, tmp_path)


def test_a_grown_grid_keeps_every_runs_fractions_in_the_protocol(tmp_path) -> None:
    """A second run of one encoder at one more fraction (issue 20's 50% point for the
    federated encoder only) adds its cells; the file's grid still lists the first run's."""
    target = _target("classification")
    run_evaluation(target, parse_encoders([]), FROZEN, tmp_path)
    more = replace(FROZEN, fractions=(25.0,), modes=("finetune",))
    seen: list[tuple[int, int]] = []
    progress = lambda d, t, r: seen.append((d, t))  # noqa: E731
    results = run_evaluation(target, parse_encoders([]), more, tmp_path, on_cell=progress)
    assert seen == [(0, 1), (1, 1)]  # of this run's grid, not the folder's
    assert results["protocol"]["fractions"] == [25.0, 50.0, 100.0]
    assert results["protocol"]["modes"] == ["frozen", "finetune"]
    assert sorted((c["mode"], c["fraction"]) for c in results["cells"]) == [
        ("finetune", 25.0),
        ("frozen", 50.0),
        ("frozen", 100.0),
    ]


def test_labels_saved_is_the_smallest_fraction_reaching_random_at_full_data() -> None:
    encoders = {
        "pre": {"kind": "checkpoint", "model": {"m": 1}},
        "random": {"kind": "random", "model": {"m": 1}},
    }
    rows = [
        {"encoder": e, "mode": "frozen", "fraction": f, "mean": m, "sd": 0.0, "n": 3}
        for e, f, m in [("pre", 1.0, 0.5), ("pre", 10.0, 0.72), ("pre", 100.0, 0.9),
                        ("random", 1.0, 0.3), ("random", 10.0, 0.5), ("random", 100.0, 0.7)]
    ]  # fmt: skip
    saved = {(e["encoder"], e["mode"]): e for e in labels_saved(rows, encoders)}
    assert saved[("pre", "frozen")]["fraction"] == 10.0
    assert saved[("random", "frozen")]["fraction"] == 100.0
    assert saved[("pre", "frozen")]["baseline_not_monotone"] is False
    rows[1]["mean"] = 0.69
    saved = {(e["encoder"], e["mode"]): e for e in labels_saved(rows, encoders)}
    assert saved[("pre", "frozen")]["fraction"] == 100.0
    # random init better at 10% than with all labels: the target cannot resolve label budgets
    rows[4]["mean"] = 0.75
    saved = {(e["encoder"], e["mode"]): e for e in labels_saved(rows, encoders)}
    assert saved[("pre", "frozen")]["baseline_not_monotone"] is True
    protocol = {"min_steps": 1, "max_steps": 2, "epochs": 1, "head_lr": 1, "encoder_lr": 1}
    summary = {"primary_metric": "m", "protocol": protocol, "target": "t", "target_file": "f"}
    text = render_markdown({**summary, "rows": rows, "labels_saved": list(saved.values())})
    assert "| pre | frozen | 100% | 0% (baseline scores less with all labels" in text


# -- the command ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_site(tmp_path_factory) -> Path:
    from umedpt.data.demo import write_demo_federation

    files = write_demo_federation(tmp_path_factory.mktemp("demo"), seed=0)
    return next(f for f in files if f.stem == "clinic-a")


def test_the_command_writes_results_summary_and_plot(tmp_path, demo_site) -> None:
    folder = _checkpoint(tmp_path / "pre" / "checkpoint")
    args = ["evaluate", "--target", str(demo_site), "--encoder", f"mine={folder}",
            "--out", str(tmp_path / "eval"), "--fractions", "100", "--seeds", "1",
            "--steps", "2", "--min-steps", "2", "--mode", "frozen"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Labels saved" in result.output
    cells = json.loads((tmp_path / "eval" / "results.json").read_text())["cells"]
    assert {(c["encoder"], c["fraction"]) for c in cells} == {("mine", 100.0), ("random", 100.0)}
    assert "| mine |" in (tmp_path / "eval" / "summary.md").read_text()


def test_a_target_the_readers_refuse_fails_before_training(tmp_path, demo_site) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(demo_site.read_text().replace('path = "', 'path = "missing-'))
    result = CliRunner().invoke(
        app, ["evaluate", "--target", str(bad), "--out", str(tmp_path / "eval")]
    )
    assert result.exit_code == 2
    assert "missing-" in result.output
    assert not (tmp_path / "eval" / "results.json").exists()


def test_a_self_supervised_target_is_refused_before_training(tmp_path, demo_site) -> None:
    """No labels, so no labels to save; and its batches mask at random (review finding 6)."""
    unlabelled = demo_site.parent / "clinic-e.toml"
    args = ["evaluate", "--target", str(unlabelled), "--out", str(tmp_path / "eval"),
            "--fractions", "100", "--seeds", "1", "--steps", "2", "--min-steps", "2",
            "--mode", "frozen"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "self-supervised" in said and "has no labels" in said
    assert not (tmp_path / "eval").exists()


def test_imagenet_weights_come_from_a_local_file_only(tmp_path, monkeypatch) -> None:
    import timm
    from timm.models import get_pretrained_cfg

    no_local_weights(monkeypatch, tmp_path)
    url = get_pretrained_cfg("resnet18").url
    weights = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    weights.parent.mkdir(parents=True)
    torch.manual_seed(7)
    reference = timm.create_model("resnet18", pretrained=False)
    torch.save(reference.state_dict(), weights)
    (spec, random_baseline) = parse_encoders(["imagenet:resnet18"])
    assert random_baseline.label == "random" and random_baseline.config == spec.config
    built = spec.build().model.state_dict()
    torch.testing.assert_close(built["conv1.weight"], reference.state_dict()["conv1.weight"])


def test_a_balanced_target_trains_its_heads_with_weights_from_its_training_labels(
    tmp_path, demo_site
) -> None:
    from umedpt.config import load_site_config
    from umedpt.evaluation.runner import load_target

    kind = 'type = "classification"'
    text = demo_site.read_text().replace(kind, kind + '\nclass_weighting = "balanced"')
    weighted = demo_site.parent / "clinic-a-balanced.toml"
    weighted.write_text(text)
    target = load_target(load_site_config(weighted).tasks[0])
    labels = Counter(s.targets["label"] for s in target.splits["train"])
    weights = target.task.class_weights
    assert len(weights) == len(target.task.classes) and len(set(weights)) > 1
    # n / (C * n_c): every class weighs the same in total, and a training image 1 on average
    totals = {c: weights[c] * n for c, n in labels.items()}
    assert max(totals.values()) == pytest.approx(min(totals.values()))
    assert sum(totals.values()) == pytest.approx(sum(labels.values()))
    assert load_target(load_site_config(demo_site).tasks[0]).task.class_weights == ()
    # the results folder records the weighting, and a rerun resumes it (JSON lists, not tuples)
    first = run_evaluation(target, parse_encoders([]), FROZEN, tmp_path / "eval")
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())["target"]
    assert saved["class_weighting"] == "balanced" and saved["class_weights"] == list(weights)
    again = run_evaluation(target, parse_encoders([]), FROZEN, tmp_path / "eval")
    assert len(again["cells"]) == len(first["cells"]) == 2


# -- image-level probes: standardised pooled features ----------------------------------------
def test_an_image_level_probe_sees_every_feature_on_one_scale() -> None:
    """A pretrained encoder's few high-variance directions must not drown the small ones: the
    probe's vector is the same whatever scale and offset one stage's features have."""
    generator = torch.Generator().manual_seed(0)
    stages = [torch.randn(16, c, 2, 2, generator=generator) for c in (4, 8)]
    distorted = [stages[0] * 1000.0 + 5.0, stages[1]]
    outputs = []
    for features in (stages, distorted):
        neck = PooledPyramid([4, 8])
        neck.fit(PooledPyramid.pool(features))
        outputs.append(neck(features))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-3, atol=1e-3)
    pooled = outputs[0]
    torch.testing.assert_close(pooled.mean(0), torch.zeros(12), atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled.std(0, unbiased=False), torch.ones(12), atol=1e-3, rtol=0)


def test_each_cell_standardises_with_all_training_images_banked_or_not(
    monkeypatch, tmp_path
) -> None:
    """Every cell's statistics come from the whole training split (no labels), so they are the
    same at every fraction, and the same from the feature bank as from the encoder."""
    fitted: list[torch.Tensor] = []
    original = PooledPyramid.fit

    def recording(self, pooled):
        fitted.append(pooled.clone())
        original(self, pooled)

    monkeypatch.setattr(PooledPyramid, "fit", recording)
    target = _target("classification")
    encoders = parse_encoders([])
    banked = EvalProtocol(fractions=(50.0, 100.0), modes=("frozen",), seeds=1, max_steps=2,
                          min_steps=2, evals=1)  # fmt: skip
    run_evaluation(target, encoders, banked, tmp_path / "banked")
    finetune = EvalProtocol(fractions=(100.0,), modes=("finetune",), seeds=1, max_steps=2,
                            min_steps=2, evals=1)  # fmt: skip
    run_evaluation(target, encoders, finetune, tmp_path / "finetune")  # no feature bank
    assert len(fitted) == 3 and all(p.shape[0] == len(target.splits["train"]) for p in fitted)
    torch.testing.assert_close(fitted[0], fitted[1])  # 50% and 100%: one standardisation
    torch.testing.assert_close(fitted[0], fitted[2], rtol=1e-4, atol=1e-5)  # banked or not


def test_a_results_folder_of_the_unstandardised_probe_is_refused_for_image_level_targets(
    tmp_path,
) -> None:
    for task_type, refused in (("classification", True), ("segmentation", False)):
        target = _target(task_type)
        folder = tmp_path / task_type
        run_evaluation(target, parse_encoders([]), FROZEN, folder)
        path = folder / "results.json"
        saved = json.loads(path.read_text())
        path.write_text(json.dumps({**saved, "version": 1}))
        if refused:  # its cells were trained on unstandardised features: never mixed with new
            with pytest.raises(EvaluationMismatch, match="older umedpt-fl"):
                run_evaluation(target, parse_encoders([]), FROZEN, folder)
        else:  # the change is to image-level probes only: the cells stay valid
            again = run_evaluation(target, parse_encoders([]), FROZEN, folder)
            assert again["cells"] == saved["cells"]


@pytest.mark.parametrize("bank", [False, True])
def test_a_probe_trained_on_its_own_is_standardised_too(bank) -> None:
    """Whoever runs a cell without the runner still trains on standardised features, never on
    raw ones: the trainer fits an unfitted neck on the training images first."""
    target = _target("classification")
    (spec,) = parse_encoders([])
    probe = Probe(spec.build(), target.task, spec.config, seed=0)
    cpu = torch.device("cpu")
    features = FeatureBank.build(probe.encoder, target.task, target.splits, cpu) if bank else None
    expected = pooled_training_features(probe.encoder, target.task, target.splits["train"], cpu)
    trainer = CellTrainer(target.task, FROZEN, "balanced_accuracy", cpu)
    trainer.run(probe, "frozen", target.splits, range(4), seed=0, fraction=50.0,
                encoder_label="random", bank=features)  # fmt: skip
    assert probe.neck.fitted
    torch.testing.assert_close(probe.neck.mean, expected.mean(0), rtol=1e-4, atol=1e-5)


def test_image_level_is_what_the_task_types_block_says() -> None:
    """The probe and the results version rely on the flag: it must match the block."""
    config = model_config("tiny")
    for name in TASK_TYPES.names():
        task_type = get_task_type(name)
        block = task_type.build_block([8, 16, 32, 64], config)
        assert task_type.image_level == isinstance(block, ImageBlock), name
