"""Augmentation in the training streams: seeded, resumable, training only, and under DP."""

from __future__ import annotations

import dataclasses
import math
import secrets

import pytest
import torch

from tests.helpers import make_run
from umedpt.data.augment import Augmenter
from umedpt.data.augment_config import AUGMENT_POLICIES, AugmentConfig
from umedpt.model import UMedPTModel
from umedpt.models.presets import model_config
from umedpt.privacy import DPSGDConfig
from umedpt.training.streams import PoissonStream, TaskStream
from umedpt.training.trainer import MultiTaskTrainer, TaskRun, TrainConfig

POLICY = AugmentConfig(hflip=0.5, vflip=0.5, rotate=20, scale=(0.6, 1.0), brightness=0.3)


def augmented_run(kind: str = "segmentation", policy: AugmentConfig = POLICY, **kwargs) -> TaskRun:
    run = make_run("t", kind, **kwargs)
    return TaskRun(dataclasses.replace(run.config, augment=policy), run.data)


def stream(run: TaskRun, seed: int) -> TaskStream:
    return TaskStream(
        run.data["train"], 8, run.task_type.collate, seed=seed, augment=run.augmenter()
    )


def batches(s: TaskStream | PoissonStream, n: int) -> list:
    return [s.next_batch() for _ in range(n)]


def same(a, b) -> bool:
    return torch.equal(a.images, b.images) and all(
        torch.equal(a.targets[k], b.targets[k]) for k in a.targets
    )


def test_the_same_seed_gives_the_same_augmented_batches_and_another_seed_others() -> None:
    run = augmented_run()
    first, again = batches(stream(run, 3), 3), batches(stream(run, 3), 3)
    assert all(same(a, b) for a, b in zip(first, again))
    plain = batches(TaskStream(run.data["train"], 8, run.task_type.collate, seed=3), 1)[0]
    assert not same(first[0], plain)  # augmentation did something
    other = batches(stream(run, 4), 3)
    assert not any(same(a, b) for a, b in zip(first, other))


def test_the_augmenter_draws_from_the_generator_it_is_given() -> None:
    """Not from a fixed or global seed: equal generators, equal samples; others differ."""
    run = augmented_run(n_train=4)
    augment, samples = run.augmenter(), run.data["train"]

    def images(seed: int) -> list[torch.Tensor]:
        return [s.image for s in augment(samples, torch.Generator().manual_seed(seed))]

    first, again, other = images(0), images(0), images(1)
    assert all(map(torch.equal, first, again))
    assert not any(map(torch.equal, first, other))


def test_a_resumed_stream_gives_the_same_next_batches() -> None:
    run = augmented_run()
    original = stream(run, 7)
    batches(original, 3)  # into its second pass (32 samples, batch 8)
    state = {k: v.clone() for k, v in original.state_dict().items()}
    expected = batches(original, 4)
    resumed = stream(run, 99)
    resumed.load_state_dict(state)
    assert all(same(a, b) for a, b in zip(expected, batches(resumed, 4)))


def test_the_global_rng_is_left_alone() -> None:
    """Dropout and stochastic depth draw from it: augmentation must not shift their stream."""
    s = stream(augmented_run(), 0)
    before = torch.get_rng_state()
    batches(s, 2)
    assert torch.equal(before, torch.get_rng_state())


def test_no_policy_means_no_augmenter_and_the_batches_of_before() -> None:
    run = augmented_run(policy=AugmentConfig())
    assert run.augmenter() is None
    plain = TaskStream(run.data["train"], 8, run.task_type.collate, seed=5)
    assert all(same(a, b) for a, b in zip(batches(stream(run, 5), 5), batches(plain, 5)))


def test_validation_is_never_augmented_and_training_is(monkeypatch) -> None:
    run = augmented_run("classification")
    calls = []
    original = type(run.task_type).augment

    def counting(self, sample, transform):
        calls.append(sample.source)
        return original(self, sample, transform)

    monkeypatch.setattr(type(run.task_type), "augment", counting)
    model = UMedPTModel(model_config("tiny"), [run.config], seed=0)
    trainer = MultiTaskTrainer(model, [run], TrainConfig(seed=0))
    assert isinstance(trainer.streams["t"].augment, Augmenter)
    trainer.evaluate("val")
    assert calls == []
    trainer.train_steps(1)
    assert len(calls) == run.config.batch_size
    # evaluate gives what a trainer without augmentation gives on the same weights
    plain_run = TaskRun(dataclasses.replace(run.config, augment=AugmentConfig()), run.data)
    plain = MultiTaskTrainer(model, [plain_run], TrainConfig(seed=0))
    assert plain.evaluate("val") == trainer.evaluate("val")


def test_poisson_batches_are_augmented_too() -> None:
    run = augmented_run(n_train=16)
    kwargs = dict(samples=run.data["train"], batch_size=16, collate=run.task_type.collate)
    augmented = PoissonStream(**kwargs, seed=1, augment=run.augmenter())
    plain = PoissonStream(**kwargs, seed=1)
    a, b = augmented.next_batch(), plain.next_batch()  # rate 1: every sample, same order
    assert a.images.shape == b.images.shape and not torch.equal(a.images, b.images)


@pytest.mark.parametrize("kind", ["classification", "segmentation"])
def test_a_private_run_trains_with_augmentation(kind: str, monkeypatch) -> None:
    run = augmented_run(kind, AUGMENT_POLICIES["default"], n_train=8, n_val=2)
    run = TaskRun(dataclasses.replace(run.config, batch_size=2), run.data)
    monkeypatch.setattr(secrets, "randbits", lambda bits: 1)  # a batch at every step
    model = UMedPTModel(model_config("tiny"), [run.config], seed=0)
    privacy = DPSGDConfig(max_grad_norm=1.0, noise_multipliers={"t": 1.0})
    trainer = MultiTaskTrainer(model, [run], TrainConfig(seed=0), privacy=privacy)
    assert isinstance(trainer.streams["t"].augment, Augmenter)
    report = trainer.train_steps(2)
    assert report.examples["t"] > 0 and math.isfinite(report.losses["t"])
