"""DP-SGD step time over the non-private step, for the same batch (tiny preset).

Why: sample-level DP needs per-sample gradients (``torch.func`` vmap over the whole model,
since Opacus' grad samplers refuse timm's Swin), each clipped, summed and noised. The goal
is a DP step no more than 3x a non-private step. Both trainers train the same model (same
seed) on the same pre-collated batch, replayed every step, timed side by side, interleaved.
Variants: ``plain`` (MultiTaskTrainer, no privacy) and ``dp-k`` (DP-SGD, chunk size k).

    PYTHONPATH=. python3 bench/dp_step.py             # ~3 min on 2 cores
    PYTHONPATH=. python3 bench/dp_step.py --reps 1 --steps 2 --out /tmp/b   # smoke test
"""

from __future__ import annotations

from federation.entry import enter_command_process

enter_command_process()  # a process entry: no Flower telemetry, whatever imports Flower

import time
from typing import Any

from bench import synthetic
from bench.common import bench_parser, finish_run, median, settings_of, start_run
from bench.report import Report
from umedpt.model import UMedPTModel
from umedpt.models.presets import PRESETS
from umedpt.privacy import DPSGDConfig
from umedpt.tasks.base import Batch
from umedpt.training.seeding import seed_everything
from umedpt.training.trainer import MultiTaskTrainer, TaskRun, TrainConfig


class Replay:
    """A stream that returns the same batch every step (so both variants see one batch)."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch

    def next_batch(self) -> Batch:
        return self.batch


def make_trainer(run: TaskRun, batch: Batch, seed: int, chunk: int | None) -> MultiTaskTrainer:
    seed_everything(seed)
    model = UMedPTModel(PRESETS.get("tiny"), [run.config], seed=seed)
    privacy = None
    if chunk is not None:
        privacy = DPSGDConfig(
            max_grad_norm=1.0, noise_multipliers={run.name: 1.0}, chunk_size=chunk
        )
    trainer = MultiTaskTrainer(model, [run], TrainConfig(seed=seed), privacy=privacy)
    trainer.streams[run.name] = Replay(batch)  # type: ignore[assignment]
    return trainer


def main() -> None:
    parser = bench_parser(__doc__, name="dp_step", threads=2)
    parser.add_argument("--task-type", default="classification")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--chunks", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    start = start_run(args)
    results: dict[str, Any] = {}
    for batch_size in args.batch_sizes:
        run = synthetic.make_run(
            "t", args.task_type, n=batch_size, size=args.image_size, batch_size=batch_size, seed=0
        )
        batch = synthetic.precollate(run, 1)[0]
        variants = {"plain": None, **{f"dp-{k}": k for k in args.chunks if k <= batch_size}}
        trainers = {name: make_trainer(run, batch, args.seed, k) for name, k in variants.items()}
        for trainer in trainers.values():
            trainer.train_step()  # warm-up (vmap's first call, allocator)
        times: dict[str, list[float]] = {name: [] for name in trainers}
        for rep in range(args.reps):
            order = list(trainers) if rep % 2 == 0 else list(reversed(trainers))
            for name in order:
                tic = time.perf_counter()
                for _ in range(args.steps):
                    trainers[name].train_step()
                times[name].append((time.perf_counter() - tic) / args.steps)
        plain = median(times["plain"])
        results[str(batch_size)] = {
            name: {
                "seconds_per_step": t,
                "median_seconds": median(t),
                "ratio": median(t) / plain,
                "ratios": [a / b for a, b in zip(t, times["plain"])],
            }
            for name, t in times.items()
        }
    fields = {
        "settings": settings_of(
            args, "task_type", "batch_sizes", "chunks", "image_size", "reps", "steps", "seed"
        ),
        "results": results,
        "goal_ratio": 3.0,
    }
    finish_run(args, "dp_step", fields, report_of, start=start)


def report_of(result: dict[str, Any]) -> Report:
    s = result["settings"]
    report = Report("DP-SGD step vs non-private step (same batch)", notes_heading="Notes").text(
        f"Tiny preset, {s['task_type']}, {s['image_size']} px, {s['reps']} interleaved "
        f"repetitions of {s['steps']} steps (one warm-up step excluded), "
        f"{result['machine'].get('torch_threads')} torch threads, CPU. Ratio = median DP step "
        "time / median non-private step time of the same batch. Goal: <= 3x."
    )
    for batch_size, variants in result["results"].items():
        rows = [
            [name, v["median_seconds"], v["ratio"], " ".join(f"{r:.2f}" for r in v["ratios"])]
            for name, v in variants.items()
        ]
        report.heading(f"Batch {batch_size}")
        report.table(["variant", "median s/step", "ratio", "ratios"], rows)
    return report


if __name__ == "__main__":
    main()
