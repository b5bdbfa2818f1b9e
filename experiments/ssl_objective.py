"""Which self-supervised objective for unlabelled sites: SimMIM (masked pixels) vs SimSiam.

A small, honest comparison on the tiny preset. The encoder is trained from the same seed on
the *images* of the demo site ``clinic-a`` (lesion textures; its labels are not used), by

- ``simmim``: the ``self-supervised`` task type as shipped (60% of an 8 x 8 patch grid
  masked, light head, L1 on the masked pixels, normalised per sample);
- ``simsiam``: two augmented views (random resized crop, flips, brightness), an MLP
  projector and predictor with LayerNorm (DP-SGD forbids BatchNorm), negative cosine with a
  stop-gradient: also a per-sample loss, so also usable under DP. (VICReg's variance and
  covariance terms are batch statistics, which per-sample gradients cannot use: not run.)

After the same number of steps, for the random-init encoder and each objective: the effective
rank of the mean-pooled last-stage features of the training images, and the test balanced
accuracy of a closed-form ridge probe on the pooled features of all four stages, trained on
the training labels (``experiments/feature_rank.py``'s probe). Results:
``experiments/results/ssl-objective.{json,md}``.

    PYTHONPATH=. python3 experiments/ssl_objective.py --steps 150
"""

from __future__ import annotations

from federation.entry import enter_command_process

enter_command_process()  # a process entry: before anything imports Flower

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.common import start_run
from bench.report import Report, write_results
from experiments.common import experiment_parser
from experiments.feature_rank import effective_rank, ridge_balanced_accuracy
from umedpt.config import load_site_config
from umedpt.data.demo import write_demo_federation
from umedpt.data.loading import load_task_data
from umedpt.data.samples import Sample
from umedpt.model import UMedPTModel
from umedpt.models.encoder import Encoder
from umedpt.models.presets import model_config
from umedpt.tasks.base import stack_images
from umedpt.training.trainer import MultiTaskTrainer, TaskRun, TrainConfig

NAME = "ssl-objective"
OBJECTIVES = ("random", "simmim", "simsiam")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = experiment_parser(__doc__, name=NAME, threads=2, preset="tiny")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", type=int, default=180, help="demo images per site")
    return parser.parse_args(argv)


# --- SimSiam ---------------------------------------------------------------------------


def mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim_in, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, dim_out)
    )


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random resized crop (50-100% of the side), flips and a brightness shift, per image."""
    out = []
    size = images.shape[-1]
    for image in images:
        side = int(size * (0.5 + 0.5 * float(torch.rand(1, generator=generator))))
        y, x = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=generator))
        crop = image[:, y : y + side, x : x + side].unsqueeze(0)
        view = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]
        if float(torch.rand(1, generator=generator)) < 0.5:
            view = view.flip(-1)
        if float(torch.rand(1, generator=generator)) < 0.5:
            view = view.flip(-2)
        out.append(view + 0.3 * (float(torch.rand(1, generator=generator)) - 0.5))
    return torch.stack(out)


def train_simsiam(
    encoder: Encoder, train: list[Sample], args: argparse.Namespace, lr: float
) -> None:
    channels = encoder.out_channels[-1]
    projector, predictor = mlp(channels, 512, 256), mlp(256, 128, 256)
    params = [*encoder.parameters(), *projector.parameters(), *predictor.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(args.seed)
    encoder.train()
    for step in range(args.steps):
        index = torch.randperm(len(train), generator=generator)[: args.batch_size].tolist()
        images = stack_images([train[i] for i in index])
        v1, v2 = augment(images, generator), augment(images, generator)
        z1, z2 = (projector(encoder(v)[-1].mean(dim=(2, 3))) for v in (v1, v2))
        p1, p2 = predictor(z1), predictor(z2)
        loss = (
            -(
                F.cosine_similarity(p1, z2.detach()).mean()
                + F.cosine_similarity(p2, z1.detach()).mean()
            )
            / 2
        )
        for group in optimizer.param_groups:  # the preset's warm-up, as the trainer does
            group["lr"] = lr * min(1.0, (step + 1) / 20)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


# --- measurement -----------------------------------------------------------------------


def pooled(encoder: Encoder, samples: list[Sample]) -> list[torch.Tensor]:
    encoder.eval()
    with torch.no_grad():
        chunks = [
            [f.mean(dim=(2, 3)) for f in encoder(stack_images(samples[i : i + 64]))]
            for i in range(0, len(samples), 64)
        ]
    return [torch.cat(stage) for stage in zip(*chunks)]


def measure(objective: str, data: Any, task: Any, args: argparse.Namespace) -> dict[str, Any]:
    config = model_config(args.preset)
    ssl_task = dataclasses.replace(task, name="ssl", type="self-supervised", classes=())
    unlabelled = dataclasses.replace(data, splits={"train": data["train"], "val": data["val"]})
    model = UMedPTModel(config, [ssl_task], seed=args.seed)
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    if objective == "simmim":
        trainer = MultiTaskTrainer(
            model, [TaskRun(ssl_task, unlabelled)], TrainConfig(seed=args.seed)
        )
        trainer.train_steps(args.steps)
        extra["reconstruction_score"] = trainer.evaluate()["ssl"]["reconstruction_score"]
    elif objective == "simsiam":
        torch.manual_seed(args.seed)
        train_simsiam(model.encoder, data["train"], args, config.lr)
    seconds = time.perf_counter() - start
    train, test = pooled(model.encoder, data["train"]), pooled(model.encoder, data["test"])
    y_train = torch.tensor([s.targets["label"] for s in data["train"]])
    y_test = torch.tensor([s.targets["label"] for s in data["test"]])
    return {
        "objective": objective,
        "steps": 0 if objective == "random" else args.steps,
        "seconds": round(seconds, 1),
        "effective_rank_last_stage": effective_rank(train[-1]),
        "ridge_balanced_accuracy": ridge_balanced_accuracy(
            torch.cat(train, 1), y_train, torch.cat(test, 1), y_test, len(task.classes)
        ),
        "ridge_last_stage": ridge_balanced_accuracy(
            train[-1], y_train, test[-1], y_test, len(task.classes)
        ),
        **extra,
    }


def report_of(result: dict[str, Any]) -> Report:
    s = result["settings"]
    report = Report("Self-supervised objective: SimMIM vs SimSiam (tiny preset, demo lesions)")
    report.text(
        f"The tiny preset trained from seed {s['seed']} for {s['steps']} steps at batch "
        f"{s['batch_size']} on the images of the demo site clinic-a ({s['train_images']} "
        "training images, 64 px, labels unused), then probed on its three texture classes "
        f"({s['test_images']} test images; chance = 0.333). Effective rank: of the mean-pooled "
        "last-stage features of the training images. Ridge: closed-form probe on the training "
        "labels (all four stages, and the last stage alone). Written by "
        "`experiments/ssl_objective.py`, on CPU."
    )
    report.table(
        [
            "objective",
            "steps",
            "seconds",
            "effective rank",
            "ridge (4 stages)",
            "ridge (last)",
            "reconstruction score (val)",
        ],
        [
            [
                r["objective"],
                r["steps"],
                r["seconds"],
                r["effective_rank_last_stage"],
                r["ridge_balanced_accuracy"],
                r["ridge_last_stage"],
                r.get("reconstruction_score"),
            ]
            for r in result["rows"]
        ],
    )
    return report


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    start_run(args)
    with tempfile.TemporaryDirectory() as folder:
        site_file = write_demo_federation(
            Path(folder), seed=args.seed, images_per_site=args.images, unlabelled=False
        )[0]
        task = load_site_config(site_file).tasks[0]
        data = load_task_data(task)
    rows = [measure(objective, data, task, args) for objective in OBJECTIVES]
    result = {
        "settings": {
            "seed": args.seed,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "preset": args.preset,
            "train_images": len(data["train"]),
            "test_images": len(data["test"]),
        },
        "rows": rows,
        "comment": args.comment,
    }
    write_results(args.out, args.name, result, report_of(result))


if __name__ == "__main__":
    main()
