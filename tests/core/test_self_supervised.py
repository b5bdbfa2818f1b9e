"""The self-supervised task type: masks, per-sample loss normalisation, metrics, training, DP."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.helpers import make_run
from umedpt.model import UMedPTModel
from umedpt.models.heads import ReconstructionOutputs
from umedpt.models.presets import model_config
from umedpt.privacy import DPSGDConfig, clipped_grad_sum, task_parameters
from umedpt.tasks import Batch, get_task_type
from umedpt.tasks.self_supervised import (
    MASK_GRID,
    MASK_RATIO,
    draw_masks,
    effective_rank,
    fixed_mask,
)
from umedpt.training.trainer import MultiTaskTrainer, TaskRun, TrainConfig

SSL = get_task_type("self-supervised")


def small_run(n_train: int = 16, n_val: int = 8, size: int = 32, batch_size: int = 8) -> TaskRun:
    """An unlabelled task of synthetic images at ``size`` px (32: fast)."""
    generator = torch.Generator().manual_seed(0)
    run = make_run("t", "self-supervised", n_train=0, n_val=0)
    data = dataclasses.replace(
        run.data,
        splits={
            "train": SSL.synthetic_samples(n_train, generator, image_size=size),
            "val": SSL.synthetic_samples(n_val, generator, image_size=size),
        },
    )
    config = dataclasses.replace(run.config, image_size=size, batch_size=batch_size)
    return TaskRun(config, data)


def test_the_type_needs_no_classes_and_its_head_stays_while_its_block_is_empty() -> None:
    run = small_run()
    assert run.config.classes == () and SSL.min_classes == 0
    model = UMedPTModel(model_config("tiny"), [run.config], seed=0)
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if n.startswith("blocks.")]  # parameter-free shared block
    assert "heads.t.proj.weight" in names
    assert not [k for k in model.shared_state_dict() if k.startswith("heads.")]


def test_masks_hide_the_ratio_of_the_grid_and_zero_those_pixels() -> None:
    masks = draw_masks(5, 64, torch.Generator().manual_seed(0))
    assert masks.shape == (5, 1, 64, 64)
    cells = masks[:, 0, :: 64 // MASK_GRID, :: 64 // MASK_GRID]  # one pixel per patch
    assert (cells.flatten(1).sum(1) == round(MASK_RATIO * MASK_GRID**2)).all()
    assert not torch.equal(masks[0], masks[1])
    batch = SSL.collate(small_run().data["train"][:4])
    mask = batch.targets["mask"]
    assert (batch.images * mask == 0).all()  # masked pixels are zero (the mean colour)
    visible = (1 - mask).bool().expand_as(batch.images)
    assert torch.equal(batch.images[visible], batch.targets["pixels"][visible])


def test_training_masks_follow_the_seed_and_evaluation_masks_are_fixed_per_image() -> None:
    samples = small_run().data["train"][:4]
    torch.manual_seed(1)
    first = SSL.collate(samples).targets["mask"]
    torch.manual_seed(1)
    again = SSL.collate(samples).targets["mask"]
    other = SSL.collate(samples).targets["mask"]  # the RNG has moved on
    assert torch.equal(first, again) and not torch.equal(first, other)
    # evaluation: the same mask for an image whatever the RNG, batch or position in it
    evaluated = SSL.collate_eval(samples).targets["mask"]
    torch.manual_seed(99)
    reordered = SSL.collate_eval(samples[::-1]).targets["mask"]
    assert torch.equal(evaluated, reordered.flip(0))
    assert torch.equal(evaluated[2:3], fixed_mask(samples[2]))
    assert not torch.equal(evaluated[0], evaluated[1])


def _outputs_for(batch: Batch, offsets: torch.Tensor) -> ReconstructionOutputs:
    return ReconstructionOutputs(offsets, torch.zeros(batch.size, 4))


def test_the_loss_is_one_for_the_visible_mean_zero_for_the_truth_and_per_sample() -> None:
    run = small_run()
    batch = SSL.collate_eval(run.data["val"][:4])
    zeros = torch.zeros_like(batch.images)  # offsets 0: predicts each image's visible mean
    assert float(SSL.loss(_outputs_for(batch, zeros), batch, run.config)["masked_l1"]) == (
        pytest.approx(1.0, abs=1e-5)
    )
    pixels, mask = batch.targets["pixels"], batch.targets["mask"]
    visible = 1 - mask
    mean = (pixels * visible).sum((2, 3), keepdim=True) / visible.sum((2, 3), keepdim=True)
    perfect = pixels - mean
    assert float(SSL.loss(_outputs_for(batch, perfect), batch, run.config)["masked_l1"]) < 1e-5
    # a sample's loss depends on that sample only: the batch loss is the mean of singles
    noisy = torch.randn_like(batch.images, generator=torch.Generator().manual_seed(0))
    whole = SSL.loss(_outputs_for(batch, noisy), batch, run.config)["masked_l1"]
    singles = []
    for i in range(batch.size):
        one = Batch(batch.images[i : i + 1], {k: v[i : i + 1] for k, v in batch.targets.items()})
        singles.append(SSL.loss(_outputs_for(one, noisy[i : i + 1]), one, run.config)["masked_l1"])
    torch.testing.assert_close(whole, torch.stack(singles).mean())
    # ... and does not change when another sample of the batch changes
    changed = Batch(batch.images, {**batch.targets, "pixels": pixels.clone()})
    changed.targets["pixels"][1:] *= 3
    one = Batch(changed.images[:1], {k: v[:1] for k, v in changed.targets.items()})
    torch.testing.assert_close(
        SSL.loss(_outputs_for(one, noisy[:1]), one, run.config)["masked_l1"], singles[0]
    )


def test_metrics_score_zero_for_the_mean_one_for_the_truth_and_track_rank() -> None:
    run = small_run()
    batch = SSL.collate_eval(run.data["val"])
    metrics = SSL.metrics(run.config)
    metrics.update(_outputs_for(batch, torch.zeros_like(batch.images)), batch)
    assert metrics.compute()["reconstruction_score"] == pytest.approx(0.0, abs=1e-6)
    assert effective_rank(torch.eye(6)) == pytest.approx(5.0, rel=0.05)  # centred: rank 5
    assert effective_rank(torch.ones(6, 3)) == 0.0  # collapsed


@pytest.mark.parametrize(
    "preset,size", [("tiny", 64), pytest.param("swin-t", 224, marks=pytest.mark.slow)]
)
def test_untrained_loss_is_about_one_on_the_swin_presets_at_batch_16(preset, size) -> None:
    """The tiny preset (64 px) and the paper's Swin-T (224 px) on a CPU, batch 16."""
    run = small_run(n_train=16, n_val=0, size=size)
    model = UMedPTModel(model_config(preset), [run.config], seed=0).eval()
    batch = SSL.collate(run.data["train"])
    with torch.no_grad():
        outputs = model(batch.images, "t")
    assert outputs.reconstruction.shape == (16, 3, size, size)
    loss = float(SSL.loss(outputs, batch, run.config)["masked_l1"])
    assert 0.9 < loss < 1.2, (preset, loss)


def test_a_short_training_improves_the_reconstruction_score_on_val() -> None:
    run = small_run(n_train=32, n_val=8)
    model = UMedPTModel(model_config("tiny"), [run.config], seed=0)
    trainer = MultiTaskTrainer(model, [run], TrainConfig(seed=0))
    before = trainer.evaluate()["t"]
    assert abs(before["reconstruction_score"]) < 0.05  # untrained: about the visible mean
    trainer.train_steps(10)
    after = trainer.evaluate()["t"]
    assert set(after) == {"loss", "reconstruction_score", "masked_l1", "effective_rank"}
    assert after["reconstruction_score"] > before["reconstruction_score"] + 0.05, (before, after)
    assert after["loss"] < before["loss"]


def test_the_same_seed_gives_the_same_masks_and_weights() -> None:
    def one_step(seed: int) -> torch.Tensor:
        run = small_run(n_train=8, n_val=0)
        model = UMedPTModel(model_config("tiny"), [run.config], seed=0)
        MultiTaskTrainer(model, [run], TrainConfig(seed=seed)).train_steps(1)
        return model.heads["t"].proj.weight.detach()

    first = one_step(0)
    assert torch.equal(first, one_step(0))
    assert not torch.equal(first, one_step(1))  # other batches and masks


def test_a_private_step_trains_the_head_with_vectorised_per_sample_gradients() -> None:
    run = small_run(n_train=4, n_val=0)
    model = UMedPTModel(model_config("tiny"), [run.config], seed=0).eval()
    batch = SSL.collate(run.data["train"][:2])
    params = task_parameters(model, "t", model.task_blocks["t"])
    assert "heads.t.proj.weight" in params

    def loss_fn(outputs, one):
        return SSL.loss(outputs, one, run.config)

    kwargs = dict(max_grad_norm=1e9, chunk_size=2)
    vmapped = clipped_grad_sum(model, ("t",), params, batch, loss_fn, vectorize=True, **kwargs)
    looped = clipped_grad_sum(model, ("t",), params, batch, loss_fn, vectorize=False, **kwargs)
    for k in params:
        torch.testing.assert_close(vmapped.grads[k], looped.grads[k], rtol=1e-3, atol=1e-6)
    assert float(vmapped.grads["heads.t.proj.weight"].abs().sum()) > 0

    privacy = DPSGDConfig(max_grad_norm=1.0, noise_multipliers={"t": 0.5})
    trainer = MultiTaskTrainer(model, [run], TrainConfig(seed=0), privacy=privacy)
    head = model.heads["t"].proj.weight.detach().clone()
    trainer.train_steps(1)
    assert not torch.equal(head, model.heads["t"].proj.weight)
