"""Federation overhead in Flower's Ray simulation: round wall time vs the sites' training time.

Why: a federated round should cost little more than its sites' local training. For each round
after the first (round 1 includes Ray and actor start-up and data loading), this divides the
round's wall time (``RoundRecord.seconds``: send, train, aggregate, and evaluation when due) by
the SUM of the sites' own ``train-seconds`` (``MultiTaskTrainer.train_steps`` only). Target:
<= 1.15x. Variants (each ``umedpt_fl.simulation.simulate`` in a fresh process, run one after the
other, never concurrently), on the four demo sites:

- ``parallel``: ``cpus_per_site=1``: on 2 cores Ray runs 2 sites at a time, so the ratio can
  fall below 1 (the sum of training times exceeds the wall time);
- ``sequential``: ``cpus_per_site=1.5``: Ray fits one actor on 2 CPUs, so one site at a
  time, and ``simulate`` gives it ``int(1.5) = 1`` torch thread: the ratio shows the
  per-round overhead directly (``sequential-2threads`` is ``cpus_per_site=2``, one site at a
  time with 2 torch threads: on a busy 2-core machine two-thread OpenMP regions stall, see
  README);
- each with evaluation only after the last round (``eval_every`` large) and with evaluation
  every round (``eval`` variants: the sites' validation counts as overhead here).

A no-evaluation variant's last round still carries the final evaluation (the strategy always
evaluates after the last round), so its median is over rounds 2 .. R-1.

Then, in this process without Ray, the site-side costs of one round are timed piece by piece
through the site's public API, as ``client.app.train`` runs a round: building the
``SiteRunner``, its ``train_round`` (split into the training it reports and the rest:
restoring last round's state, loading the shared weights, saving state, copying weights out)
and serialising the reply's arrays, to say where the overhead goes.

    PYTHONPATH=. python3 bench/overhead.py                   # ~10 min on 2 cores
    PYTHONPATH=. python3 bench/overhead.py --quick --out /tmp/bench
"""

from __future__ import annotations

from federation.entry import enter_command_process

enter_command_process()  # a process entry: no Flower telemetry, whatever imports Flower

import argparse
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.common import bench_parser, finish_run, median, scratch_dir, start_run
from bench.report import Report
from bench.simtools import add_round_args, check_rounds, demo_sites, round_summary, simulate_rounds

log = logging.getLogger("bench.overhead")

VARIANTS = {  # name -> (cpus_per_site, evaluate every round)
    "parallel": (1.0, False),
    "parallel-eval": (1.0, True),
    "sequential": (1.5, False),
    "sequential-eval": (1.5, True),
    "sequential-2threads": (2.0, False),
}
DEFAULT_VARIANTS = ["parallel", "parallel-eval", "sequential"]


def run_variant(
    name: str, site_files: Sequence[Path], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    cpus, every_round = VARIANTS[name]
    log.info("variant %s: cpus_per_site=%g, eval every round: %s", name, cpus, every_round)
    payload, rows = simulate_rounds(
        name,
        site_files,
        work,
        cpus_per_site=cpus,
        num_server_rounds=args.rounds,
        local_steps=args.local_steps,
        eval_every=1 if every_round else 10_000,
        seed=args.seed,
    )
    summary = round_summary(rows, args.rounds if every_round else args.rounds - 1)
    measured = [r for r in rows if r["round"] in summary["measured_rounds"]]
    slots = max(1, int((os.cpu_count() or 1) // cpus))
    return {
        "cpus_per_site": cpus,
        "torch_threads": max(1, int(cpus)),
        "eval_every_round": every_round,
        "parallel_slots": slots,
        **summary,
        "median_overhead_seconds": median(
            [r["seconds"] - r["train_seconds_sum"] / slots for r in measured]
        ),
        "simulate_seconds": payload["simulate_seconds"],
        "ray_worker_niceness": payload["ray_worker_niceness"],
        "process_seconds": payload["seconds"],
    }


def site_breakdown(site_files: Sequence[Path], args: argparse.Namespace, work: Path) -> list[dict]:
    """Time the parts of one training round of each site in this process (no Ray, no Flower
    messages), through ``SiteRunner``'s public API only, as ``client.app.train`` runs it: a
    new SiteRunner per message (the site's data is cached per process), its ``train_round``
    (restore last round's local state, load the shared weights, train, save state, copy the
    shared weights out), then the reply's arrays serialised."""
    from client.site import SiteRunner
    from federation.settings import RunSettings
    from umedpt.config import load_site_config

    torch.set_num_threads(args.breakdown_threads)
    rows = []
    for file in site_files:
        site = load_site_config(file)
        settings = RunSettings(
            local_steps=args.local_steps,
            seed=args.seed,
            state_root=str(work / "breakdown"),
            run_key="breakdown",
        )
        first = SiteRunner(site, settings)  # warms the per-process data cache
        shared = {k: v.clone() for k, v in first.shared_state().items()}
        first.train_round(shared, 1)  # round 1 leaves state on disk to restore
        timings: dict[str, list[float]] = {}
        for server_round in range(2, 2 + args.breakdown_reps):
            for label, seconds in timed_round(site, settings, shared, server_round).items():
                timings.setdefault(label, []).append(seconds)
        row: dict[str, Any] = {"site": site.name, "blocks": ",".join(first.blocks)}
        row.update({k: median(v) for k, v in timings.items()})
        rows.append(row)
    return rows


def timed_round(site, settings, shared: dict, server_round: int) -> dict[str, float]:
    """One site round as ``client.app.train`` runs it, timed part by part."""
    from flwr.app import ArrayRecord

    from client.site import SiteRunner
    from strategies import arrays_nbytes

    tic = time.perf_counter()
    runner = SiteRunner(site, settings)
    built = time.perf_counter()
    outcome = runner.train_round(shared, server_round)
    trained = time.perf_counter()
    arrays_nbytes(ArrayRecord({k: outcome.shared[k] for k in shared}))
    serialised = time.perf_counter()
    return {
        "build SiteRunner": built - tic,
        "train": outcome.train_seconds,
        # restore state, load shared, save state, copy the weights out
        "rest of train_round": trained - built - outcome.train_seconds,
        "serialise the reply's arrays": serialised - trained,
    }


def report_of(result: dict[str, Any]) -> Report:
    variants = result["variants"]
    header = [
        "variant",
        "cpus/site (threads)",
        "eval",
        "rounds",
        "median s/round",
        "median sum train-s",
        "median wall / sum train",
        "per-round ratios",
        "round 1 s",
    ]
    rows = []
    for name, v in variants.items():
        ratios = ", ".join(
            f"{r['ratio']:.2f}" for r in v["rounds"] if r["round"] in v["measured_rounds"]
        )
        rows.append(
            [
                name,
                f"{v['cpus_per_site']:g} ({v['torch_threads']})",
                "every round" if v["eval_every_round"] else "last round only",
                f"{v['measured_rounds'][0]}-{v['measured_rounds'][-1]}",
                f"{v['median_round_seconds']:.1f}",
                f"{v['median_train_seconds_sum']:.1f}",
                f"**{v['median_ratio']:.2f}x**",
                ratios,
                f"{v['first_round_seconds']:.1f}",
            ]
        )
    report = Report("Federation overhead in Flower's Ray simulation")
    report.text(
        f"Four demo sites (cls, seg, det, cls; {result['images_per_site']} images each), tiny "
        f"preset, {result['rounds']} rounds x {result['local_steps']} local steps, 2 cores "
        "(shared, noisy machine). Ratio = round wall time / sum of the sites' `train-seconds` "
        "in that round; round 1 (Ray/actor start-up, data loading) excluded. Target <= 1.15x."
    )
    report.table(header, rows)
    if result.get("breakdown"):
        parts = [k for k in result["breakdown"][0] if k not in ("site", "blocks")]
        report.text(
            "Where a site's round goes (in-process, no Ray; median seconds over "
            f"{result['breakdown_reps']} rounds, {result['breakdown_threads']} torch "
            "thread(s)):"
        )
        report.table(
            ["site", "blocks", *parts, "non-train share"],
            [
                [
                    b["site"],
                    b["blocks"],
                    *[f"{b[p]:.3f}" for p in parts],
                    f"{1 - b['train'] / sum(b[p] for p in parts):.0%}",
                ]
                for b in result["breakdown"]
            ],
        )
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__, name="overhead", quick="smoke run: 3 rounds x 2 steps")
    add_round_args(parser, rounds=6, local_steps=20, images_per_site=150)
    parser.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--breakdown-reps", type=int, default=2)
    parser.add_argument("--breakdown-threads", type=int, default=1)
    parser.add_argument("--no-breakdown", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.local_steps, args.images_per_site, args.breakdown_reps = 3, 2, 30, 1
    check_rounds(parser, args)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = start_run(args)
    with scratch_dir("bench-overhead-") as work:
        site_files = demo_sites(work / "data", 4, images_per_site=args.images_per_site)
        variants = {name: run_variant(name, site_files, args, work) for name in args.variants}
        breakdown = [] if args.no_breakdown else site_breakdown(site_files, args, work)
    fields = {
        "rounds": args.rounds,
        "local_steps": args.local_steps,
        "images_per_site": args.images_per_site,
        "seed": args.seed,
        "target_ratio": 1.15,
        "variants": variants,
        "breakdown": breakdown,
        "breakdown_reps": args.breakdown_reps,
        "breakdown_threads": args.breakdown_threads,
    }
    return finish_run(args, "overhead", fields, report_of, start=start)


if __name__ == "__main__":
    main()
