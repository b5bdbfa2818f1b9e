"""UMedPT's multi-task loop: learning, repeatability, step logic and resumable state."""

import math

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


def test_report_has_each_tasks_loss_components() -> None:
    trainer = build()
    per_step = []
    report = trainer.train_steps(2, on_step=lambda i, results: per_step.append(results))
    assert set(report.components) == {"cls", "seg", "det"}
    assert set(report.components["seg"]) == {"dice", "focal"}
    assert set(report.components["det"]) == {"classification", "bbox_regression", "centerness"}
    for task, components in report.components.items():
        # the mean total is the sum of the mean components
        assert sum(components.values()) == pytest.approx(report.losses[task], rel=1e-5)
        for name, mean in components.items():
            values = [results[task].components[name] for results in per_step]
            assert mean == pytest.approx(sum(values) / 2)
        assert [results[task].size for results in per_step] == [8, 8]


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


def _grads(params) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.detach().clone() for p in params]


def test_a_tasks_backward_reaches_the_shared_weights_and_its_own_head_only() -> None:
    trainer = build(tasks=[("cls", "classification"), ("seg", "segmentation")])
    model = trainer.model
    seen: dict[str, dict[str, list[torch.Tensor | None]]] = {}

    def record_at_head_step(task: str) -> None:
        """Look at every gradient when the task's head optimizer steps, right after its backward."""

        def record(*_) -> None:
            seen[task] = {
                name: _grads(module.parameters())
                for name, module in [
                    ("encoder", model.encoder),
                    ("cls_block", model.blocks["classification"]),
                    ("seg_block", model.blocks["segmentation"]),
                    ("cls_head", model.heads["cls"]),
                    ("seg_head", model.heads["seg"]),
                ]
            }

        trainer.head_optimizers[task].register_step_pre_hook(record)

    record_at_head_step("cls")
    record_at_head_step("seg")
    trainer.train_step()

    def nonzero(grads) -> bool:
        return all(g is not None for g in grads) and any(bool(g.abs().sum() > 0) for g in grads)

    after_cls, after_seg = seen["cls"], seen["seg"]  # cls runs first in the round-robin
    assert all(g is None for g in after_cls["seg_head"] + after_cls["seg_block"])
    assert nonzero(after_cls["cls_head"]) and nonzero(after_cls["cls_block"])
    assert nonzero(after_cls["encoder"])
    # the classification head's gradient is cleared after its own step ...
    assert all(g is None for g in after_seg["cls_head"])
    assert nonzero(after_seg["seg_head"]) and nonzero(after_seg["seg_block"])
    # ... while the shared gradients accumulate over the tasks until the shared step
    for first, both in zip(after_cls["cls_block"], after_seg["cls_block"]):
        assert torch.equal(first, both)  # the segmentation task does not use this block
    assert any(not torch.equal(a, b) for a, b in zip(after_cls["encoder"], after_seg["encoder"]))


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


def test_shared_regularizer_adds_its_gradient_to_the_shared_step() -> None:
    """With and without a regularizer, the shared gradients differ by its analytic gradient."""
    weight = 0.75

    def shared_grads_of_first_step(regularize: bool) -> list[torch.Tensor | None]:
        trainer = build(grad_clip=None)  # reseeds: both runs see the same batches and dropout
        anchor = [p.detach() + 1.0 for p in trainer.model.shared_parameters()]

        def pull_towards_anchor() -> torch.Tensor:  # weight * ||w - anchor||^2
            params = trainer.model.shared_parameters()
            return weight * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))

        captured = []
        trainer.shared_optimizer.register_step_pre_hook(
            lambda *_: captured.append(_grads(trainer.model.shared_parameters()))
        )
        trainer.train_steps(1, shared_regularizer=pull_towards_anchor if regularize else None)
        return captured[0]

    plain, regularized = shared_grads_of_first_step(False), shared_grads_of_first_step(True)
    # at the first step w = anchor - 1, so the regularizer's gradient is 2 * weight * (w - anchor)
    expected = -2 * weight
    assert len(plain) == len(regularized) > 0
    for without, with_reg in zip(plain, regularized, strict=True):
        assert without is not None and with_reg is not None
        assert torch.allclose(with_reg - without, torch.full_like(without, expected), atol=1e-5)


def _lr_factors_per_step(steps: int, **config) -> list[float]:
    """The learning-rate factor each of ``steps`` steps ran with (shared lr 1e-3, head 2e-3)."""
    trainer = build(tasks=[("cls", "classification")], lr=1e-3, head_lr=2e-3, **config)
    factors = []
    for _ in range(steps):
        shared = trainer.shared_optimizer.param_groups[0]["lr"] / 1e-3
        head = trainer.head_optimizers["cls"].param_groups[0]["lr"] / 2e-3
        assert shared == pytest.approx(head, rel=1e-12, abs=1e-15)
        factors.append(shared)
        trainer.train_step()
    return factors


def test_warmup_then_constant_learning_rate() -> None:
    factors = _lr_factors_per_step(6, warmup_steps=4)
    # (step + 1) / warmup, then constant
    assert factors == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0], rel=1e-12)


def test_warmup_then_cosine_learning_rate() -> None:
    factors = _lr_factors_per_step(9, warmup_steps=2, schedule="cosine", total_steps=10)
    # after 2 warm-up steps, 0.5 * (1 + cos(pi * (step - 2) / 8)) over the remaining 8 steps
    expected = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(7)]
    assert expected[2:7:2] == pytest.approx([1.0, 0.5 + 0.5 * math.sqrt(0.5), 0.5])
    assert factors == pytest.approx(expected, rel=1e-12)


def test_cosine_learning_rate_reaches_zero_and_stays_there() -> None:
    factors = _lr_factors_per_step(6, warmup_steps=0, schedule="cosine", total_steps=4)
    expected = [1.0, 0.5 + 0.5 * math.sqrt(0.5), 0.5, 0.5 - 0.5 * math.sqrt(0.5), 0.0, 0.0]
    assert factors == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_a_late_joiner_follows_the_federations_decay_but_warms_up_its_own_steps() -> None:
    """A federated site jumps to its round's place on the federation's cosine; a trainer
    that has not trained yet still warms up (its optimizer state is fresh)."""
    trainer = build(tasks=[("cls", "classification")], lr=1e-3, head_lr=2e-3, warmup_steps=2,
                    schedule="cosine", total_steps=10)  # fmt: skip
    trainer.set_schedule_step(5)
    jumped = []
    for _ in range(4):
        shared = trainer.shared_optimizer.param_groups[0]["lr"] / 1e-3
        assert trainer.head_optimizers["cls"].param_groups[0]["lr"] / 2e-3 == pytest.approx(shared)
        jumped.append(shared)
        trainer.train_step()
    decay = [0.5 * (1 + math.cos(math.pi * (k - 2) / 8)) for k in range(5, 9)]
    assert jumped == pytest.approx([0.5 * decay[0], *decay[1:]], rel=1e-12)
    trainer.set_schedule_step(1)  # before the decay starts, and past its own warm-up
    assert trainer.shared_optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


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
