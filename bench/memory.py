"""Peak training memory with 4 tasks vs 1 task: UMedPT's constant-memory property.

Why: the trainer backpropagates each task's loss right after its forward pass, so only one
task's activation graph is alive at a time and peak memory should not grow with the number of
tasks. The contrast is a NAIVE multi-task loop that sums all task losses and calls backward
once: it keeps every task's graph alive together, so its peak grows with the task count.

Every (loop, task set) variant runs in a fresh subprocess, so peaks do not leak between
variants. In the child: build data, model and optimizers; run one warm-up step (allocates the
AdamW state); hand freed heap back to the OS (``malloc_trim``) and record RSS (the baseline);
reset the kernel's high-water mark (``/proc/self/clear_refs``); run ``--steps`` steps; read
``VmHWM``. Reported: peak RSS, and the increase of the peak above the baseline (activations,
gradients and allocator slack, without the Python, torch, weights and optimizer state that
every variant shares). ``ru_maxrss`` (lifetime peak, warm-up included) is kept too.
On CUDA, ``torch.cuda.max_memory_allocated`` is reported as well.

    PYTHONPATH=. python3 bench/memory.py                 # ~3 min on 2 cores
    PYTHONPATH=. python3 bench/memory.py --reps 1 --steps 2 --out /tmp/b   # smoke test
"""

from __future__ import annotations

from federation.entry import enter_command_process

enter_command_process()  # a process entry: no Flower telemetry, whatever imports Flower

import argparse
import ctypes
import gc
import json
import os
import re
import resource
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench import synthetic
from bench.common import REPO_ROOT, bench_parser, finish_run, median, settings_of
from bench.report import Report
from umedpt.model import UMedPTModel
from umedpt.models.presets import PRESETS
from umedpt.tasks.base import Batch
from umedpt.training.seeding import seed_everything
from umedpt.training.trainer import MultiTaskTrainer, TaskRun, TrainConfig

LOOPS = ("trainer", "naive")
# Comparisons: a 4-task set against the 1-task set (the heaviest single task).
TASK_SETS: dict[str, tuple[str, ...]] = {
    "1 seg": ("segmentation",),
    "4 seg": ("segmentation",) * 4,
    "2 seg + 2 cls": ("segmentation", "classification", "segmentation", "classification"),
}
COMPARISONS = (("4 seg", "1 seg"), ("2 seg + 2 cls", "1 seg"))


# -- child process ------------------------------------------------------------------------
def _proc_status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else -1


def _release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc), so RSS is live memory, not the warm-up's peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not permitted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class SavedTensorTracker:
    """Peak bytes of tensors saved for backward (activations), allocator-independent.

    A ``saved_tensors_hooks`` pack hook wraps every saved tensor in a holder; the holder dies
    when autograd frees that graph. Storages are counted once however often they are saved,
    and parameter storages (alive anyway) are not counted. This is exactly what the
    backward-per-task loop is meant to bound: the live activation graphs.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.refs: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _add(self, tensor: torch.Tensor) -> int | None:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self.param_ptrs or ptr == 0:
            return None
        if self.refs.get(ptr, 0) == 0:
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        self.refs[ptr] = self.refs.get(ptr, 0) + 1
        return ptr

    def _remove(self, ptr: int, nbytes: int) -> None:
        self.refs[ptr] -= 1
        if self.refs[ptr] == 0:
            del self.refs[ptr]
            self.current -= nbytes

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        tracker = self

        class Holder:
            __slots__ = ("tensor", "ptr", "nbytes")

            def __init__(self, tensor: torch.Tensor) -> None:
                self.tensor = tensor
                self.nbytes = tensor.untyped_storage().nbytes()
                self.ptr = tracker._add(tensor)

            def __del__(self) -> None:
                if self.ptr is not None:
                    tracker._remove(self.ptr, self.nbytes)

        return torch.autograd.graph.saved_tensors_hooks(Holder, lambda h: h.tensor)


def naive_runner(
    model: UMedPTModel, runs: Sequence[TaskRun], batches: list[list[Batch]], device: str
) -> Callable[[], None]:
    """One step = forward every task, sum the losses, ONE backward: all graphs alive at once."""
    optimizer, steps = synthetic.hand_written_loop(model, runs, batches)

    def step() -> None:
        total = torch.zeros((), device=device)
        for task, batch in next(steps):
            batch = batch.to(device)
            total = total + synthetic.task_loss(model, task, batch)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def trainer_runner(
    model: UMedPTModel, runs: Sequence[TaskRun], batches: list[list[Batch]], device: str, seed: int
) -> Callable[[], None]:
    """UMedPT's loop (backward per task), replaying the same batches as the naive loop."""
    trainer = MultiTaskTrainer(model, runs, TrainConfig(seed=seed, device=device))
    return synthetic.replay_into(trainer, runs, batches).train_step


def child_main(args: argparse.Namespace) -> None:
    """Measure one variant in this (fresh) process; print one JSON line."""
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    task_types = TASK_SETS[args.child_tasks]
    runs, batches = synthetic.synthetic_runs(task_types, args)
    seed_everything(args.seed)
    model = UMedPTModel(PRESETS.get(args.preset), [r.config for r in runs], seed=args.seed).to(
        device
    )
    rss_after_model_kb = _proc_status_kb("VmRSS")
    if args.child_loop == "naive":
        step = naive_runner(model, runs, batches, device)
    else:
        step = trainer_runner(model, runs, batches, device, args.seed)
    step()  # warm-up: AdamW state, allocator pools
    gc.collect()
    _release_free_memory()
    baseline_kb = _proc_status_kb("VmRSS")
    reset_ok = _reset_peak_rss()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_baseline = torch.cuda.memory_allocated()
    tracker = SavedTensorTracker(model)
    with tracker.hooks():
        for _ in range(args.steps):
            step()
    peak_kb = _proc_status_kb("VmHWM") if reset_ok else -1
    result: dict[str, Any] = {
        "loop": args.child_loop,
        "tasks": args.child_tasks,
        "rss_after_model_mb": rss_after_model_kb / 1024,
        "baseline_rss_mb": baseline_kb / 1024,
        "peak_rss_mb": peak_kb / 1024 if reset_ok else None,
        "increase_mb": (peak_kb - baseline_kb) / 1024 if reset_ok else None,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "hwm_reset": reset_ok,
        "saved_activations_mb": tracker.peak / 2**20,
    }
    if device == "cuda":
        torch.cuda.synchronize()
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["cuda_increase_mb"] = (torch.cuda.max_memory_allocated() - cuda_baseline) / 2**20
    print("RESULT " + json.dumps(result))


# -- parent process -----------------------------------------------------------------------
def child_env() -> dict[str, str]:
    """A fixed glibc mmap threshold: freed tensors go back to the OS, so RSS follows live memory.

    With glibc's default *dynamic* threshold, freed large blocks stay in the heap and later
    reuse fragments it, so RSS grows with the number of forward/backward cycles (more tasks
    = more cycles) even when the live memory does not.
    """
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    env.setdefault("MALLOC_TRIM_THRESHOLD_", "131072")
    return env


def run_child(loop: str, tasks: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one variant in a fresh interpreter and parse its result line."""
    cmd = [
        sys.executable,
        "-m",
        "bench.memory",
        "--child-loop",
        loop,
        "--child-tasks",
        tasks,
        *("--steps", str(args.steps), "--batch-size", str(args.batch_size)),
        *("--image-size", str(args.image_size), "--batches", str(args.batches)),
        *("--threads", str(args.threads), "--seed", str(args.seed), "--preset", args.preset),
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO_ROOT, check=False, env=child_env()
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"child {loop}/{tasks} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])


def summarise(samples: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Medians per variant and per-repetition ratios of each comparison."""
    keys = (
        "saved_activations_mb",
        "peak_rss_mb",
        "increase_mb",
        "ru_maxrss_mb",
        "baseline_rss_mb",
        "cuda_max_allocated_mb",
    )
    medians: dict[str, dict[str, dict[str, float]]] = {}
    for loop, by_tasks in samples.items():
        medians[loop] = {}
        for tasks, reps in by_tasks.items():
            medians[loop][tasks] = {
                k: median([r[k] for r in reps]) for k in keys if reps[0].get(k) is not None
            }
    ratios: dict[str, dict[str, dict[str, Any]]] = {}
    for loop, by_tasks in samples.items():
        ratios[loop] = {}
        for many, one in COMPARISONS:
            entry: dict[str, Any] = {}
            for k in (
                "saved_activations_mb",
                "peak_rss_mb",
                "increase_mb",
                "cuda_max_allocated_mb",
            ):
                if by_tasks[many][0].get(k) is None:
                    continue
                per_rep = [a[k] / b[k] for a, b in zip(by_tasks[many], by_tasks[one], strict=True)]
                entry[k] = {"per_rep": per_rep, "median": median(per_rep)}
            ratios[loop][f"{many} / {one}"] = entry
    return {"medians": medians, "ratios": ratios}


def report_of(result: dict[str, Any]) -> Report:
    s = result["settings"]
    report = Report(
        "Peak memory: 4 tasks vs 1 task (constant-memory property)", notes_heading="Notes"
    ).text(
        f"{synthetic.describe_setup(s)}, {s['steps']} measured steps after 1 warm-up step, "
        f"{s['reps']} repetitions (variants interleaved), each variant in a fresh process, "
        f"{s['threads']} torch thread(s), device {s['device']}. "
        "Saved activations = peak bytes of tensors autograd holds for backward (parameters "
        "excluded). Peak = VmHWM, reset after the warm-up step; increase = peak - RSS after "
        "warm-up + malloc_trim (activations, gradients, allocator slack). Children run with a "
        "fixed glibc mmap threshold. Target for the trainer: 4-task / 1-task <= 1.10x."
    )
    keys = ["saved_activations_mb", "baseline_rss_mb", "peak_rss_mb", "increase_mb", "ru_maxrss_mb"]
    rows = []
    for loop, by_tasks in result["summary"]["medians"].items():
        for tasks, m in by_tasks.items():
            rows.append([loop, tasks, *(m[k] for k in keys)])
    header = [
        "loop",
        "tasks",
        "saved act. MB",
        "baseline MB",
        "peak MB",
        "increase MB",
        "maxrss MB",
    ]
    report.heading("Medians").table(header, rows).heading("Ratios (median; per rep)")
    rows = []
    ratio_keys = ("saved_activations_mb", "peak_rss_mb", "increase_mb")
    for loop, comps in result["summary"]["ratios"].items():
        for comp, entry in comps.items():
            row: list[Any] = [loop, comp]
            for k in ratio_keys:
                per_rep = " ".join(f"{x:.3f}" for x in entry[k]["per_rep"])
                row.append(f"**{entry[k]['median']:.3f}** ({per_rep})")
            rows.append(row)
    header = ["loop", "comparison", "saved activations", "peak RSS", "increase over baseline"]
    return report.table(header, rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__, threads=2, preset="tiny")
    parser.add_argument("--steps", type=int, default=4, help="measured steps per variant")
    parser.add_argument("--reps", type=int, default=3)
    synthetic.add_synthetic_args(parser, batches=2)
    parser.add_argument("--child-loop", choices=LOOPS, help=argparse.SUPPRESS)
    parser.add_argument("--child-tasks", choices=list(TASK_SETS), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.child_loop:
        child_main(args)
        return None
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {
        loop: {t: [] for t in TASK_SETS} for loop in LOOPS
    }
    variants = [(loop, tasks) for loop in LOOPS for tasks in TASK_SETS]
    for rep in range(args.reps):
        order = variants if rep % 2 == 0 else list(reversed(variants))
        for loop, tasks in order:
            res = run_child(loop, tasks, args)
            samples[loop][tasks].append(res)
            print(
                f"rep {rep + 1} {loop:7s} {tasks:14s} saved {res['saved_activations_mb']:.0f} MB, "
                f"peak {res['peak_rss_mb']:.0f} MB, "
                f"increase {res['increase_mb']:.0f} MB"
            )
    summary = summarise(samples)
    for loop, comps in summary["ratios"].items():
        for comp, entry in comps.items():
            print(
                f"{loop:7s} {comp}: saved x{entry['saved_activations_mb']['median']:.3f}, "
                f"peak x{entry['peak_rss_mb']['median']:.3f}, "
                f"increase x{entry['increase_mb']['median']:.3f}"
            )
    settings = settings_of(
        args, "steps", "reps", "batch_size", "batches", "image_size", "preset", "threads", "seed"
    )
    fields = {
        "settings": {**settings, "device": "cuda" if torch.cuda.is_available() else "cpu"},
        "samples": samples,
        "summary": summary,
    }
    return finish_run(args, "memory", fields, report_of)


if __name__ == "__main__":
    main()
