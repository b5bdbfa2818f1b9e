"""Per-sample gradients, joint clipping and the private step of the multi-task trainer."""

from __future__ import annotations

import dataclasses
import secrets

import pytest
import torch
from torch import nn

from tests.helpers import make_run
from umedpt.model import UMedPTModel
from umedpt.models.presets import model_config
from umedpt.privacy import (
    DPSGDConfig,
    PrivacyError,
    check_private_modules,
    clipped_grad_sum,
    task_parameters,
)
from umedpt.tasks import total_loss
from umedpt.training.trainer import MultiTaskTrainer, TaskRun, TrainConfig


def small_run(n: int, batch_size: int = 8):
    """A classification task of ``n`` 32 px images (the helpers' 64 px, halved: faster)."""
    run = make_run("t", "classification", n_train=n, n_val=0)
    for sample in run.data["train"]:
        sample.image = sample.image[:, ::2, ::2].contiguous()
    config = dataclasses.replace(run.config, image_size=32, batch_size=batch_size)
    return TaskRun(config, run.data)


def setup(n: int = 4):
    run = small_run(n)
    model = UMedPTModel(model_config("tiny"), [run.config], seed=0)
    model.eval()  # no dropout or stochastic depth: per-sample and single-sample runs agree
    batch = run.task_type.collate(run.data["train"])
    params = task_parameters(model, "t", model.task_blocks["t"])

    def loss_fn(outputs, one):
        return run.task_type.loss(outputs, one, run.config)

    return run, model, batch, params, loss_fn


def single_sample_grads(run, model, params, batch, i):
    one = run.task_type.collate([run.data["train"][i]])
    model.zero_grad(set_to_none=True)
    total_loss(run.task_type.loss(model(one.images, "t"), one, run.config)).backward()
    return {k: p.grad.detach().clone() for k, p in params.items()}


def test_per_sample_gradients_match_single_sample_backward_passes() -> None:
    run, model, batch, params, loss_fn = setup()
    result = clipped_grad_sum(
        model, ("t",), params, batch, loss_fn, max_grad_norm=1e9, chunk_size=3
    )
    singles = [single_sample_grads(run, model, params, batch, i) for i in range(batch.size)]
    norms = [torch.cat([g.flatten() for g in s.values()]).norm() for s in singles]
    torch.testing.assert_close(result.norms, torch.stack(norms), rtol=1e-3, atol=1e-5)
    for k in params:  # unclipped: the sum of the single-sample gradients
        torch.testing.assert_close(
            result.grads[k], sum(s[k] for s in singles), rtol=1e-3, atol=1e-5
        )
    assert result.losses.shape == (batch.size,)


def test_a_sample_with_a_huge_loss_moves_the_clipped_sum_by_at_most_the_clip_norm() -> None:
    run, model, batch, params, loss_fn = setup()
    outlier = run.task_type.collate(run.data["train"][:1])
    outlier.images = outlier.images * 50  # far from the data: a very large gradient
    outlier.targets["labels"] = 1 - outlier.targets["labels"]
    both = type(batch)(
        torch.cat([batch.images, outlier.images]),
        {"labels": torch.cat([batch.targets["labels"], outlier.targets["labels"]])},
    )
    clip = 0.5
    without = clipped_grad_sum(model, ("t",), params, batch, loss_fn, max_grad_norm=clip)
    with_it = clipped_grad_sum(model, ("t",), params, both, loss_fn, max_grad_norm=clip)
    assert with_it.norms[-1] > 10 * clip
    change = torch.cat([(with_it.grads[k] - without.grads[k]).flatten() for k in params]).norm()
    assert change <= clip * (1 + 1e-4)


def test_the_per_sample_loop_agrees_with_vmap() -> None:
    run, model, batch, params, loss_fn = setup(n=3)
    kwargs = dict(max_grad_norm=0.1, chunk_size=2)
    vmapped = clipped_grad_sum(model, ("t",), params, batch, loss_fn, vectorize=True, **kwargs)
    looped = clipped_grad_sum(model, ("t",), params, batch, loss_fn, vectorize=False, **kwargs)
    for k in params:
        torch.testing.assert_close(vmapped.grads[k], looped.grads[k], rtol=1e-3, atol=1e-6)


def test_batchnorm_in_a_privately_trained_module_is_refused_by_name() -> None:
    with pytest.raises(PrivacyError, match=r"module 'blocks.cnn.1' is a BatchNorm2d"):
        check_private_modules(
            [("blocks.cnn", nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))]
        )


def test_the_tiny_preset_and_every_task_types_blocks_and_heads_are_batchnorm_free() -> None:
    runs = [
        make_run(t, t, n_train=1, n_val=0)
        for t in ("classification", "segmentation", "detection", "multilabel")
    ]
    model = UMedPTModel(model_config("tiny"), [r.config for r in runs], seed=0)
    check_private_modules(model.named_children())


def test_a_private_trainer_refuses_class_weights_however_the_run_was_built() -> None:
    run = make_run("t", "classification", n_train=4, n_val=0)
    weighted = TaskRun(dataclasses.replace(run.config, class_weights=(0.5, 1.5)), run.data)
    model = UMedPTModel(model_config("tiny"), [run.config], seed=0)
    privacy = DPSGDConfig(max_grad_norm=1.0, noise_multipliers={"t": 1.0})
    with pytest.raises(ValueError, match=r"tasks \['t'\]: class weights depend on every"):
        MultiTaskTrainer(model, [weighted], TrainConfig(seed=0), privacy=privacy)


SEED = 43  # Poisson draws of 40 samples at rate 1/40 from it: none, one, none


def test_a_private_trainer_steps_through_empty_poisson_batches(monkeypatch) -> None:
    """An empty Poisson batch still adds its noise, N(0, (z * C)^2) / E[batch], to the encoder,
    the task's block and its head; the report counts the samples actually drawn."""
    run = small_run(40, batch_size=1)
    model = UMedPTModel(model_config("tiny"), [run.config], seed=0)
    privacy = DPSGDConfig(max_grad_norm=1.0, noise_multipliers={"t": 1.0})
    # Sampling and noise are seeded from the OS's entropy; here both from SEED.
    monkeypatch.setattr(secrets, "randbits", lambda bits: SEED)
    trainer = MultiTaskTrainer(model, [run], TrainConfig(seed=0), privacy=privacy)
    assert trainer.sample_rates() == {"t": 1 / 40}
    draws = torch.Generator().manual_seed(SEED)
    drawn = [int((torch.rand(40, generator=draws) < 1 / 40).sum()) for _ in range(3)]
    assert drawn == [0, 1, 0]

    names = {p: n for n, p in model.named_parameters()}
    head_grads: list[dict[str, torch.Tensor]] = []
    shared_grads: list[dict[str, torch.Tensor]] = []

    def capture(into):
        def hook(optimizer, args, kwargs):
            into.append({
                names[p]: p.grad.clone()
                for group in optimizer.param_groups for p in group["params"] if p.grad is not None
            })  # fmt: skip

        return hook

    trainer.head_optimizers["t"].register_step_pre_hook(capture(head_grads))
    trainer.shared_optimizer.register_step_pre_hook(capture(shared_grads))
    report = trainer.train_steps(3)
    assert report.steps == 3 and report.examples == {"t": 1}

    # The noise, drawn independently: per step, N(0, 1) for each parameter the task trains,
    # times noise multiplier (1) * clip norm (1), over the expected batch size (40 / 40).
    noise = torch.Generator().manual_seed(SEED)
    params = task_parameters(model, "t", model.task_blocks["t"])
    for step in range(3):
        expected = {k: torch.randn(p.shape, generator=noise) for k, p in params.items()}
        if drawn[step]:
            continue
        head = {k: v for k, v in expected.items() if k.startswith("heads.t.")}
        shared = {k: v for k, v in expected.items() if k not in head}
        assert head_grads[step].keys() == head.keys()
        for k, value in head.items():
            torch.testing.assert_close(head_grads[step][k], value)
        # The shared weights' gradient is then clipped to the trainer's grad_clip (5).
        norm = float(torch.cat([v.flatten().double() for v in shared.values()]).norm())
        scale = min(1.0, 5.0 / (norm + 1e-6))
        assert shared_grads[step].keys() == shared.keys()
        for k, value in shared.items():
            torch.testing.assert_close(shared_grads[step][k], value * scale, rtol=1e-5, atol=0)


def test_the_segmentation_loss_is_vectorised() -> None:
    """Segmentation's loss must not fall back to the slow per-sample loop under DP."""
    run = make_run("t", "segmentation", n_train=3, n_val=0)
    model = UMedPTModel(model_config("tiny"), [run.config], seed=0)
    model.eval()
    batch = run.task_type.collate(run.data["train"])
    params = task_parameters(model, "t", model.task_blocks["t"])

    def loss_fn(outputs, one):
        return run.task_type.loss(outputs, one, run.config)

    kwargs = dict(max_grad_norm=1e9, chunk_size=3)
    vmapped = clipped_grad_sum(model, ("t",), params, batch, loss_fn, vectorize=True, **kwargs)
    looped = clipped_grad_sum(model, ("t",), params, batch, loss_fn, vectorize=False, **kwargs)
    for k in params:
        torch.testing.assert_close(vmapped.grads[k], looped.grads[k], rtol=1e-3, atol=1e-6)
