"""Seconds per federated round vs the number of sites, in Flower's Ray simulation on 2 cores.

Why: a coordinator should know what adding sites costs. Sites are demo sites with unique names
(``bench.simtools.demo_sites``: demo federations of seeds 0, 1, 2, ... so 3 sites = one
classification, one segmentation, one detection site; 8 and 16 sites repeat that mix with
other data). Tiny preset, fixed local steps, ``eval_every`` large, ``cpus_per_site=1`` on
the machine's 2 cores (Ray runs 2 sites at a time), each federation a fresh
``umedpt_fl.simulation.simulate`` process, run one after the other.

Seconds per round = median over rounds 2 .. R-1: round 1 carries Ray/actor start-up and data
loading, and round R the final evaluation that the strategy always runs. Then least-squares
lines seconds = a + b * sites (rounds 2 .. R-1, and round 1) with their R^2, and the peak
memory of the whole simulation (every process of its tree, Ray's included; sampled from
/proc). ``--sites-per-round N`` lets only N sites train per round in federations of more
than N sites (where memory or time needs it); the per-round cost in site trainings then
counts the sites that trained.

    PYTHONPATH=. python3 bench/scale.py                  # ~40 min on 2 busy cores (3 .. 64 sites)
    PYTHONPATH=. python3 bench/scale.py --rounds 4 --sites-per-round 8   # ~15 min
    PYTHONPATH=. python3 bench/scale.py --quick --out /tmp/bench
"""

from __future__ import annotations

from federation.entry import enter_command_process

enter_command_process()  # a process entry: no Flower telemetry, whatever imports Flower

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import bench_parser, finish_run, median, scratch_dir, start_run
from bench.report import Report
from bench.simtools import add_round_args, check_rounds, demo_sites, round_summary, simulate_rounds

log = logging.getLogger("bench.scale")


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least squares y = intercept + slope * x, with R^2."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx if sxx else 0.0  # one x only (every run trained as many sites)
    intercept = my - slope * mx
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {"intercept": intercept, "slope": slope, "r2": 1 - ss_res / ss_tot if ss_tot else 1.0}


def fits(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Seconds per round, its cost in site trainings (vs the sites that trained) and round
    1's seconds, each as a line over the number of sites."""
    sites = [r["sites"] for r in runs]
    trained = [r["sites_per_round"] for r in runs]
    return {
        "fit": linear_fit(sites, [r["median_round_seconds"] for r in runs]),
        "fit_site_trainings": linear_fit(
            trained, [r["median_round_in_site_trainings"] for r in runs]
        ),
        "fit_first_round": linear_fit(sites, [r["first_round_seconds"] for r in runs]),
    }


def run_sites(count: int, files: Sequence[Path], args: argparse.Namespace, work: Path) -> dict:
    log.info("%d sites, %d rounds x %d local steps", count, args.rounds, args.local_steps)
    limit = args.sites_per_round
    per_round = {"sites_per_round": limit} if 0 < limit < count else {}
    payload, rows = simulate_rounds(
        f"sites-{count}",
        files[:count],
        work,
        cpus_per_site=1.0,
        num_server_rounds=args.rounds,
        local_steps=args.local_steps,
        eval_every=10_000,
        seed=args.seed,
        **per_round,
    )
    return summarise(count, rows, args.rounds) | {
        "sites_per_round": per_round.get("sites_per_round", count),
        "peak_memory": payload["peak_memory"],
        "load_after": os.getloadavg(),
        "site_names": sorted(payload["report"]["sites"]),
        "simulate_seconds": payload["simulate_seconds"],
        "ray_worker_niceness": payload["ray_worker_niceness"],
    }


def summarise(count: int, rows: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    """Medians over rounds 2 .. R-1, including the load-robust "site trainings" per round.

    ``round_in_site_trainings`` = round seconds / the mean site's train-seconds of that round:
    the round's cost in units of one site's local training, which cancels the machine's load
    (it slows training and round alike); with 2 parallel slots its ideal is sites / 2.
    """
    for r in rows:
        r["round_in_site_trainings"] = r["seconds"] / (r["train_seconds_sum"] / r["sites"])
    summary = round_summary(rows, rounds - 1)
    measured = [r for r in rows if r["round"] in summary["measured_rounds"]]
    return {
        "sites": count,
        **summary,
        "median_round_in_site_trainings": median([r["round_in_site_trainings"] for r in measured]),
        "last_round_seconds": rows[-1]["seconds"],
    }


def report_of(result: dict[str, Any]) -> Report:
    fit = result["fit"]
    units = result["fit_site_trainings"]
    first = result["fit_first_round"]

    def measured(r: dict[str, Any]) -> str:
        return ", ".join(
            f"{x['seconds']:.1f}" for x in r["rounds"] if x["round"] in r["measured_rounds"]
        )

    rows = [
        [
            r["sites"],
            f"{r['median_round_seconds']:.1f}",
            f"{r['median_round_seconds'] / r['sites']:.2f}",
            f"{r['median_train_seconds_sum']:.1f}",
            f"{r['median_ratio']:.2f}",
            f"{r['median_round_in_site_trainings']:.2f}",
            measured(r),
            f"{fit['intercept'] + fit['slope'] * r['sites']:.1f}",
            f"{r['first_round_seconds']:.1f}",
            f"{r['simulate_seconds']:.0f}",
            r["sites_per_round"],
            f"{r['peak_memory']['pss_gib']:.2f}",
            f"{r['peak_memory']['rss_gib']:.2f}",
            " ".join(f"{x:.1f}" for x in r["load_after"]),
        ]
        for r in result["runs"]
    ]
    header = [
        "sites",
        "median s/round",
        "s/round per site",
        "median sum train-s",
        "wall / sum train",
        "round in site trainings",
        "rounds 2..R-1 (s)",
        "linear fit (s)",
        "round 1 s",
        "whole simulate s",
        "sites trained / round",
        "peak PSS GiB",
        "peak RSS GiB",
        "load after (1/5/15 min)",
    ]
    report = Report("Seconds per round vs number of sites (Ray simulation, 2 cores)")
    report.text(
        f"Demo sites, tiny preset, {result['rounds']} rounds x {result['local_steps']} local "
        f"steps, {result['images_per_site']} images per site, evaluation only after the last "
        f"round, `cpus_per_site=1` on {result['cores']} cores (shared, noisy machine; load "
        f"average at start {' '.join(f'{x:.1f}' for x in result['load_before'])}). Peak "
        "memory: the simulation's whole process tree (Ray's processes included), sampled "
        "every 0.5 s; PSS shares pages among the processes that map them, RSS counts them "
        "in each."
    )
    report.table(header, rows)
    return report.text(
        f"Linear fit: seconds/round = {fit['intercept']:.2f} + {fit['slope']:.2f} x sites, "
        f"R^2 = {fit['r2']:.4f}.",
        "Load-robust version (round seconds / the mean site's train-seconds in that round, i.e. "
        "the round's cost in single-site local trainings; ideal with 2 parallel slots: "
        f"sites / 2): {units['intercept']:.2f} + {units['slope']:.3f} x sites, "
        f"R^2 = {units['r2']:.4f}; that is {units['slope'] / 0.5 - 1:+.1%} per site over ideal "
        "2-way parallelism.",
        f"Round 1 (start-up, data loading): {first['intercept']:.1f} + {first['slope']:.2f} x "
        f"sites seconds, R^2 = {first['r2']:.4f}.",
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__, name="scale", quick="smoke run: 2 and 3 sites, 3 rounds")
    parser.add_argument("--sites", type=int, nargs="*", default=[3, 8, 16, 32, 64])
    parser.add_argument(
        "--sites-per-round",
        type=int,
        default=0,
        help="train only this many sites per round in larger federations (0: all)",
    )
    add_round_args(parser, rounds=5, local_steps=10, images_per_site=60)
    args = parser.parse_args(argv)
    if args.quick:
        args.sites, args.rounds, args.local_steps, args.images_per_site = [2, 3], 3, 2, 30
    check_rounds(parser, args)
    if len(args.sites) < 2:
        parser.error("give at least two site counts for the fit")
    if len({min(n, args.sites_per_round or n) for n in args.sites}) < 2:
        parser.error("--sites-per-round leaves a single number of sites trained: nothing to fit")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = start_run(args)
    load_before = os.getloadavg()
    with scratch_dir("bench-scale-") as work:
        files = demo_sites(work / "data", max(args.sites), images_per_site=args.images_per_site)
        runs = [run_sites(n, files, args, work) for n in sorted(args.sites)]
    fields = {
        "load_before": load_before,
        "cores": os.cpu_count(),
        "rounds": args.rounds,
        "local_steps": args.local_steps,
        "images_per_site": args.images_per_site,
        "seed": args.seed,
        "sites_per_round": args.sites_per_round,
        "runs": runs,
        **fits(runs),
    }
    return finish_run(args, "scale", fields, report_of, start=start)


if __name__ == "__main__":
    main()
