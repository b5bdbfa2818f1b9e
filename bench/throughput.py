"""Training throughput of ``MultiTaskTrainer`` vs a hand-written PyTorch loop.

Why: the trainer adds per-task optimizers, schedulers, a finiteness check and a stream
abstraction around forward/backward. This measures that the abstraction costs (almost)
nothing: both variants train the same model (same seed), with the same task-type loss, on the
same pre-collated batches, and are timed side by side, interleaved, on the same machine.

Variants per scenario:
  plain             forward, loss, backward per task; one AdamW over all parameters; zero_grad
  trainer           MultiTaskTrainer, grad_clip=None (like-for-like with plain), replayed batches
  trainer_defaults  MultiTaskTrainer with TrainConfig defaults (grad_clip=5.0), replayed batches
  trainer_streams   MultiTaskTrainer with its own TaskStreams (collates every batch), defaults

    PYTHONPATH=. python3 bench/throughput.py            # ~5 min on 2 cores
    PYTHONPATH=. python3 bench/throughput.py --reps 2 --steps 4 --out /tmp/b   # smoke test
"""

from __future__ import annotations

from federation.entry import enter_command_process

enter_command_process()  # a process entry: no Flower telemetry, whatever imports Flower

import argparse
import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench import synthetic
from bench.common import bench_parser, finish_run, median, settings_of, start_run
from bench.report import Report
from umedpt.model import UMedPTModel
from umedpt.models.presets import PRESETS, ModelConfig
from umedpt.tasks.base import Batch
from umedpt.training.seeding import seed_everything
from umedpt.training.trainer import MultiTaskTrainer, TaskRun, TrainConfig

Runner = Callable[[int], None]  # runs n training steps

SCENARIOS: dict[str, tuple[str, ...]] = {
    "1-task (classification)": ("classification",),
    "3-task (cls+seg+det)": ("classification", "segmentation", "detection"),
}
VARIANTS = ("plain", "trainer", "trainer_defaults", "trainer_streams")


def build_model(model_config: ModelConfig, runs: Sequence[TaskRun], seed: int) -> UMedPTModel:
    """A fresh model; the same seed gives identical weights for every variant."""
    seed_everything(seed)
    return UMedPTModel(model_config, [r.config for r in runs], seed=seed)


def plain_runner(model: UMedPTModel, runs: Sequence[TaskRun], batches: list[list[Batch]]) -> Runner:
    """The reference loop: what anyone would write by hand for per-task backward."""
    optimizer, step_batches = synthetic.hand_written_loop(model, runs, batches)

    def run(steps: int) -> None:
        for _ in range(steps):
            for task, batch in next(step_batches):
                synthetic.task_loss(model, task, batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return run


def trainer_runner(
    model: UMedPTModel,
    runs: Sequence[TaskRun],
    batches: list[list[Batch]] | None,
    config: TrainConfig,
) -> Runner:
    """The trainer; with ``batches`` its streams replay them instead of collating."""
    trainer = MultiTaskTrainer(model, runs, config)
    if batches is not None:
        synthetic.replay_into(trainer, runs, batches)

    def run(steps: int) -> None:
        trainer.train_steps(steps)

    return run


def make_runner(
    variant: str,
    model_config: ModelConfig,
    runs: Sequence[TaskRun],
    batches: list[list[Batch]],
    seed: int,
) -> Runner:
    model = build_model(model_config, runs, seed)
    if variant == "plain":
        return plain_runner(model, runs, batches)
    if variant == "trainer":
        return trainer_runner(model, runs, batches, TrainConfig(seed=seed, grad_clip=None))
    if variant == "trainer_defaults":
        return trainer_runner(model, runs, batches, TrainConfig(seed=seed))
    if variant == "trainer_streams":
        return trainer_runner(model, runs, None, TrainConfig(seed=seed))
    raise ValueError(f"unknown variant {variant!r}; use one of {VARIANTS}")


def timed(runner: Runner, steps: int) -> float:
    gc.collect()
    start = time.perf_counter()
    runner(steps)
    return time.perf_counter() - start


def bench_scenario(
    task_types: Sequence[str], args: argparse.Namespace, model_config: ModelConfig
) -> dict[str, Any]:
    """Interleaved repetitions of every variant; order alternates (ABCD DCBA ...)."""
    runs, batches = synthetic.synthetic_runs(task_types, args)
    runners = {v: make_runner(v, model_config, runs, batches, args.seed) for v in args.variants}
    for runner in runners.values():  # warm-up: allocator, optimizer state, lazy inits
        runner(args.warmup)
    seconds: dict[str, list[float]] = {v: [] for v in runners}
    for rep in range(args.reps):
        order = list(runners) if rep % 2 == 0 else list(reversed(runners))
        for variant in order:
            seconds[variant].append(timed(runners[variant], args.steps))
        print(
            f"  rep {rep + 1}/{args.reps}: "
            + ", ".join(f"{v} {seconds[v][-1]:.2f}s" for v in runners)
        )
    images_per_step = args.batch_size * len(runs)
    images_per_s = {
        v: [args.steps * images_per_step / s for s in secs] for v, secs in seconds.items()
    }
    ratios = {
        f"{v}/plain": [
            ips / base for ips, base in zip(images_per_s[v], images_per_s["plain"], strict=True)
        ]
        for v in runners
        if v != "plain" and "plain" in runners
    }
    return {
        "task_types": list(task_types),
        "images_per_step": images_per_step,
        "seconds": seconds,
        "images_per_s": images_per_s,
        "median_images_per_s": {v: median(x) for v, x in images_per_s.items()},
        "ratios": ratios,
        "median_ratios": {k: median(x) for k, x in ratios.items()},
    }


def report_of(result: dict[str, Any]) -> Report:
    a = result["settings"]
    report = Report(
        "Throughput: MultiTaskTrainer vs a hand-written loop", notes_heading="Notes"
    ).text(
        f"{synthetic.describe_setup(a)}, {a['steps']} steps per repetition, "
        f"{a['reps']} interleaved repetitions (order alternates), "
        f"{a['warmup']} warm-up steps excluded, "
        f"{a['threads']} torch threads, CPU ({result['machine'].get('Model name', '?')}). "
        "Ratio = images/s of the variant / images/s of the plain loop in the same repetition."
    )
    for name, sc in result["scenarios"].items():
        rows = []
        for v, ips in sc["images_per_s"].items():
            ratio = sc["ratios"].get(f"{v}/plain")
            rows.append(
                [
                    v,
                    sc["median_images_per_s"][v],
                    " ".join(f"{x:.1f}" for x in ips),
                    median(ratio) if ratio else "1 (reference)",
                    " ".join(f"{x:.3f}" for x in ratio) if ratio else "",
                ]
            )
        report.heading(name).table(
            ["variant", "median img/s", "img/s per rep", "median ratio", "ratios"], rows
        )
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__, threads=2, preset="tiny")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed repetition")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    synthetic.add_synthetic_args(parser, batches=8)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    args = parser.parse_args(argv)
    if "plain" not in args.variants:
        parser.error("the plain variant is the reference; keep it in --variants")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start_run(args)
    model_config = PRESETS.get(args.preset)
    scenarios = {}
    for name in args.scenarios:
        print(f"scenario {name}")
        scenarios[name] = bench_scenario(SCENARIOS[name], args, model_config)
        for k, v in scenarios[name]["median_ratios"].items():
            print(f"  median {k}: {v:.3f}")
    settings = settings_of(
        args, "steps", "reps", "warmup", "batch_size", "batches", "image_size", "preset"
    )
    fields = {
        "settings": {**settings, "threads": args.threads, "seed": args.seed},
        "scenarios": scenarios,
    }
    return finish_run(args, "throughput", fields, report_of)


if __name__ == "__main__":
    main()
