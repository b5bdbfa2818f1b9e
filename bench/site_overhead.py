"""A site's cost of one round outside its training, before and after memory-mapping its
restored optimizer state (``umedpt.checkpoint.load_trainer_state``).

Why: in a simulation of many sites every round rebuilds each site's runner, restores its
local state from disk and saves it again. Profiling (cProfile of ``SiteRunner.train_round``
on demo sites, tiny preset) put the largest share of that outside-training time in
``torch.load`` of ``trainer.pt``, the optimizer state (Adam's two moments of the encoder:
~44 MB for the tiny preset), read into fresh buffers every round. "Before" loads it that way,
"after" memory-maps it (copy on write): the same site and round, in one process, alternated,
medians. A round's time is the whole message (runner built, state restored, one local step,
state saved), since pages mapped and not read at restore are read by the optimizer's step.

    PYTHONPATH=. python3 bench/site_overhead.py              # ~2 min on 2 cores
    PYTHONPATH=. python3 bench/site_overhead.py --quick --out /tmp/bench
"""

from __future__ import annotations

from federation.entry import enter_command_process

enter_command_process()  # a process entry: no Flower telemetry, whatever imports Flower

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.common import bench_parser, finish_run, median, scratch_dir, start_run
from bench.report import Report
from bench.simtools import demo_sites, federation_settings
from client import round_state
from client.site import SiteRunner
from federation.settings import RunSettings
from umedpt.checkpoint import TRAINER_FILE, load_trainer_state
from umedpt.config import load_site_config

VARIANTS = ("before", "after")


def load_read(folder: str | Path) -> dict[str, Any] | None:
    """The former ``load_trainer_state``: read into fresh buffers."""
    path = Path(folder) / TRAINER_FILE
    return torch.load(path, weights_only=True) if path.is_file() else None


LOADERS = {"before": load_read, "after": load_trainer_state}


def one_round(site_file: Path, settings: RunSettings, variant: str) -> dict[str, float]:
    """Round 2 of the site (restoring round 1's state), with ``variant``'s loader."""
    round_state.load_trainer_state = LOADERS[variant]
    try:
        tic = time.perf_counter()
        runner = SiteRunner(load_site_config(site_file), settings)
        built = time.perf_counter() - tic
        outcome = runner.train_round(runner.shared_state(), 2)
        total = time.perf_counter() - tic
    finally:
        round_state.load_trainer_state = load_trainer_state
    return {
        "message_seconds": total,
        "built_seconds": built,
        "restore_seconds": outcome.restore_seconds,
        "train_seconds": outcome.train_seconds,
        "outside_training_seconds": total - outcome.train_seconds,
    }


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    torch.set_num_threads(1)  # one site's actor: cpus_per_site=1
    site_file = demo_sites(work / "data", 1, images_per_site=args.images_per_site)[0]
    settings = RunSettings(
        **federation_settings(
            work / "run", preset="tiny", num_server_rounds=10, local_steps=1, seed=args.seed
        )
    )
    runner = SiteRunner(load_site_config(site_file), settings)
    runner.train_round(runner.shared_state(), 1)  # round 1's saved state, restored after
    trainer_bytes = (runner.state_dir / "round-00001" / TRAINER_FILE).stat().st_size
    for variant in VARIANTS:  # warm-up: data in memory, files in the page cache
        one_round(site_file, settings, variant)
    samples: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for i in range(args.repeats):
        order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            samples[variant].append(one_round(site_file, settings, variant))
    medians = {v: {k: median([s[k] for s in rows]) for k in rows[0]} for v, rows in samples.items()}
    return {"trainer_file_bytes": trainer_bytes, "samples": samples, "medians": medians}


def report_of(result: dict[str, Any]) -> Report:
    med = result["medians"]
    keys = [
        ("message_seconds", "whole message"),
        ("outside_training_seconds", "outside training"),
        ("restore_seconds", "state restored"),
        ("built_seconds", "runner built"),
        ("train_seconds", "1 local step"),
    ]
    rows = [
        [words, med["before"][k], med["after"][k], med["after"][k] / med["before"][k]]
        for k, words in keys
    ]
    report = Report("A site's round outside training: optimizer state read vs memory-mapped")
    report.text(
        f"One demo site, tiny preset, round 2 restoring round 1 (trainer.pt "
        f"{result['trainer_file_bytes'] / 1e6:.0f} MB), 1 local step, 1 torch thread, "
        f"{result['repeats']} alternated pairs in one process, medians (seconds). Load average "
        f"at start {' '.join(f'{x:.1f}' for x in result['load_before'])}, at the end "
        f"{' '.join(f'{x:.1f}' for x in result['load_after'])} (shared 2-core machine)."
    )
    return report.table(["stage", "before (read)", "after (mmap)", "after / before"], rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__, name="site_overhead", quick="smoke run: 2 pairs")
    parser.add_argument("--repeats", type=int, default=15, help="alternated before/after pairs")
    parser.add_argument("--images-per-site", type=int, default=60)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 2
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = start_run(args)
    load_before = os.getloadavg()
    with scratch_dir("bench-site-overhead-") as work:
        measured = measure(args, work)
    fields = {
        "seed": args.seed,
        "repeats": args.repeats,
        "images_per_site": args.images_per_site,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        **measured,
    }
    return finish_run(args, "site_overhead", fields, report_of, start=start)


if __name__ == "__main__":
    main()
