"""Training augmentation's CPU cost per batch, against a training step of the same batch.

Why: augmentation runs per sample on the CPU inside the training loop (v2 transforms, one
seeded draw per batch); it must not dominate a step. For every registered task type, batch
16 at 64 px (tiny preset): the median time of the stream's augmenter on one batch under the
``default`` policy and under ``all`` (every field on, colour included), and the median
step time of a one-task trainer without and with the ``default`` policy, interleaved.

    PYTHONPATH=. python3 bench/augment_cost.py            # ~1 min on 2 cores
    PYTHONPATH=. python3 bench/augment_cost.py --reps 2 --out /tmp/b   # smoke test
"""

from __future__ import annotations

# Nothing here imports Flower (umedpt and bench.synthetic only), so no enter_command_process.
import dataclasses
import time
from typing import Any

import torch

from bench import synthetic
from bench.common import bench_parser, finish_run, median, settings_of, start_run
from bench.report import Report
from umedpt.data.augment_config import AUGMENT_POLICIES, AugmentConfig
from umedpt.model import UMedPTModel
from umedpt.models.presets import PRESETS
from umedpt.tasks import TASK_TYPES
from umedpt.training.seeding import seed_everything
from umedpt.training.trainer import MultiTaskTrainer, TaskRun, TrainConfig

POLICIES = {
    "default": AUGMENT_POLICIES["default"],
    "all": AugmentConfig(
        hflip=0.5,
        vflip=0.5,
        rotate=10,
        scale=(0.8, 1.0),
        brightness=0.2,
        contrast=0.2,
        saturation=0.2,
        hue=0.05,
    ),
}


def augment_ms(run: TaskRun, policy: AugmentConfig, reps: int, batch_size: int) -> float:
    """Median milliseconds of one batch through the task's augmenter."""
    augment = dataclasses.replace(run, config=dataclasses.replace(run.config, augment=policy))
    augmenter = augment.augmenter()
    assert augmenter is not None
    samples, generator = run.data["train"][:batch_size], torch.Generator().manual_seed(0)
    augmenter(samples, generator)  # warm-up: v2's first call
    times = []
    for _ in range(reps):
        tic = time.perf_counter()
        augmenter(samples, generator)
        times.append((time.perf_counter() - tic) * 1000)
    return median(times)


def step_ms(run: TaskRun, seed: int, reps: int, steps: int) -> dict[str, float]:
    """Median milliseconds per training step, without and with the default policy."""
    trainers = {}
    for name, policy in (("none", AugmentConfig()), ("default", POLICIES["default"])):
        variant = TaskRun(dataclasses.replace(run.config, augment=policy), run.data)
        seed_everything(seed)
        model = UMedPTModel(PRESETS.get("tiny"), [variant.config], seed=seed)
        trainers[name] = MultiTaskTrainer(model, [variant], TrainConfig(seed=seed))
        trainers[name].train_step()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for rep in range(reps):
        for name in trainers if rep % 2 == 0 else reversed(list(trainers)):
            tic = time.perf_counter()
            for _ in range(steps):
                trainers[name].train_step()
            times[name].append((time.perf_counter() - tic) * 1000 / steps)
    return {name: median(t) for name, t in times.items()}


def main() -> None:
    parser = bench_parser(__doc__, name="augment_cost", threads=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=20, help="timed batches per policy")
    parser.add_argument("--step-reps", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--task-types", nargs="+", default=None, help="default: every type")
    args = parser.parse_args()
    start = start_run(args)
    results: dict[str, Any] = {}
    for kind in args.task_types or TASK_TYPES.names():
        run = synthetic.make_run(
            "t", kind, n=args.batch_size * 4, size=args.image_size, batch_size=args.batch_size,
            seed=args.seed,
        )  # fmt: skip
        augment = {p: augment_ms(run, c, args.reps, args.batch_size) for p, c in POLICIES.items()}
        steps = step_ms(run, args.seed, args.step_reps, args.steps)
        results[kind] = {
            "augment_ms": augment,
            "step_ms": steps,
            "step_ratio": steps["default"] / steps["none"],
        }
        print(kind, results[kind])
    fields = {
        "settings": settings_of(
            args, "batch_size", "image_size", "reps", "step_reps", "steps", "seed"
        )
        | {"threads": args.threads},
        "results": results,
    }
    finish_run(args, "augment_cost", fields, report_of, start=start)


def report_of(result: dict[str, Any]) -> Report:
    s = result["settings"]
    report = Report("Augmentation cost per batch vs a training step", notes_heading="Notes")
    report.text(
        f"Batch {s['batch_size']}, {s['image_size']} px, tiny preset, CPU, "
        f"{result['machine'].get('torch_threads')} torch threads. Augment: median ms of one "
        f"batch through the augmenter ({s['reps']} batches). Step: median ms of a one-task "
        f"training step ({s['step_reps']} interleaved repetitions of {s['steps']} steps), "
        "without augmentation and with the default policy."
    )
    rows = [
        [
            kind,
            r["augment_ms"]["default"],
            r["augment_ms"]["all"],
            r["step_ms"]["none"],
            r["step_ms"]["default"],
            r["step_ratio"],
        ]
        for kind, r in result["results"].items()
    ]
    columns = ["task type", "augment default ms", "augment all ms", "step ms", "step+aug ms"]
    report.table([*columns, "ratio"], rows)
    return report


if __name__ == "__main__":
    main()
