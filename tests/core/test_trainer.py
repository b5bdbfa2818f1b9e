"""UMedPT's multi-task loop: learning, repeatability, step logic and resumable state."""

import pytest
import torch

from tests.helpers import make_run
from umedpt.model import UMedPTModel
from umedpt.models.presets import PRESETS
from umedpt.training.seeding import seed_everything
from umedpt.training.trainer import MultiTaskTrainer, TrainConfig

TASKS = [("cls", "classification"), ("seg", "segmentation"), ("det", "detection")]


def build(seed: int = 0, tasks=TASKS, **config) -> MultiTaskTrainer:
    runs = [make_run(name, kind) for name, kind in tasks]
    seed_everything(seed)
    model = UMedPTModel(PRESETS.get("tiny"), [r.config for r in runs])
    return MultiTaskTrainer(model, runs, TrainConfig(seed=seed, **config))


def test_loss_falls_on_every_task() -> None:
    trainer = build(warmup_steps=0)
    first = trainer.train_steps(2).losses
    trainer.train_steps(8)
    last = trainer.train_steps(3).losses
    for task in first:
        assert last[task] < 0.8 * first[task], (task, first[task], last[task])


def test_same_seed_gives_same_weights_other_seed_does_not() -> None:
    def weights(seed: int) -> dict[str, torch.Tensor]:
        trainer = build(seed, tasks=[("cls", "classification"), ("seg", "segmentation")])
        trainer.train_steps(3)
        return {k: v.clone() for k, v in trainer.model.state_dict().items()}

    a, b, c = weights(1), weights(1), weights(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_one_step_is_one_batch_per_task_and_one_shared_update() -> None:
    trainer = build()
    report = trainer.train_steps(3)
    assert report.steps == 3
    assert report.examples == {"cls": 24, "seg": 24, "det": 24}  # 3 steps x batch 8
    shared_state = trainer.shared_optimizer.state_dict()["state"]
    assert {int(s["step"]) for s in shared_state.values()} == {3}
    for name, optimizer in trainer.head_optimizers.items():
        steps = {int(s["step"]) for s in optimizer.state_dict()["state"].values()}
        assert steps == {3}, name


def test_heads_of_other_tasks_do_not_move() -> None:
    """A task's backward reaches the shared weights and its own head only."""
    trainer = build(tasks=[("cls", "classification"), ("seg", "segmentation")])
    seg_before = {k: v.clone() for k, v in trainer.model.heads["seg"].state_dict().items()}
    trainer.tasks = trainer.tasks[:1]  # train only the classification task
    trainer.train_steps(2)
    for key, value in trainer.model.heads["seg"].state_dict().items():
        assert torch.equal(value, seg_before[key])


def test_resumed_training_matches_uninterrupted_training() -> None:
    tasks = [("cls", "classification"), ("det", "detection")]
    straight = build(tasks=tasks)
    straight.train_steps(4)

    first = build(tasks=tasks)
    first.train_steps(2)
    weights = {k: v.clone() for k, v in first.model.state_dict().items()}
    state = first.state_dict()
    resumed = build(seed=5, tasks=tasks)  # other init and data order: all must be restored
    resumed.model.load_state_dict(weights)
    resumed.load_state_dict(state)
    resumed.train_steps(2)
    for key, value in straight.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[key], atol=1e-6), key


def test_shared_regularizer_is_applied() -> None:
    plain, regularized = build(), build()
    anchor = [p.detach().clone() + 1.0 for p in regularized.model.shared_parameters()]

    def pull_towards_anchor() -> torch.Tensor:
        params = regularized.model.shared_parameters()
        return 100.0 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))

    plain.train_steps(1)
    regularized.train_steps(1, shared_regularizer=pull_towards_anchor)
    moved = [
        not torch.equal(a, b)
        for a, b in zip(plain.model.shared_parameters(), regularized.model.shared_parameters())
    ]
    assert any(moved)


def test_evaluate_reports_loss_and_primary_metrics() -> None:
    results = build().evaluate("val")
    assert set(results) == {"cls", "seg", "det"}
    assert {"loss", "accuracy", "auroc"} <= set(results["cls"])
    assert {"loss", "dice"} <= set(results["seg"])
    assert {"loss", "map", "map_50"} <= set(results["det"])


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="total_steps"):
        TrainConfig(schedule="cosine")
    runs = [make_run("cls", "classification")]
    model = UMedPTModel(PRESETS.get("tiny"), [make_run("other", "classification").config])
    with pytest.raises(ValueError, match="no head for task"):
        MultiTaskTrainer(model, runs, TrainConfig())
