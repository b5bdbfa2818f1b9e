"""Seconds per federated round vs the number of sites, in Flower's Ray simulation on 2 cores.

Why: a coordinator should know what adding sites costs. Sites are demo sites with unique names
(``bench.simtools.demo_sites``: demo federations of seeds 0, 1, 2, ... so 3 sites = one
classification, one segmentation, one detection site; 8 and 16 sites repeat that mix with
other data). Tiny preset, fixed local steps, ``eval_every`` large, ``cpus_per_site=1`` on
the machine's 2 cores (Ray runs 2 sites at a time), each federation a fresh
``umedpt_fl.simulation.simulate`` process, run one after the other.

Seconds per round = median over rounds 2 .. R-1: round 1 carries Ray/actor start-up and data
loading, and round R the final evaluation that the strategy always runs. Then a least-squares
line seconds = a + b * sites and its R^2.

    PYTHONPATH=. python3 bench/scale.py                  # ~8 min on 2 cores
    PYTHONPATH=. python3 bench/scale.py --quick --out /tmp/bench
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, machine_info, md_table, median, write_results
from bench.simtools import demo_sites, round_rows, simulate_in_subprocess

log = logging.getLogger("bench.scale")


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least squares y = intercept + slope * x, with R^2."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {"intercept": intercept, "slope": slope, "r2": 1 - ss_res / ss_tot if ss_tot else 1.0}


def fits(runs: Sequence[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    sites = [r["sites"] for r in runs]
    return (
        linear_fit(sites, [r["median_round_seconds"] for r in runs]),
        linear_fit(sites, [r["median_round_in_site_trainings"] for r in runs]),
    )


def run_sites(count: int, files: Sequence[Path], args: argparse.Namespace, work: Path) -> dict:
    out = work / f"sites-{count}"
    settings = {
        "num_server_rounds": args.rounds,
        "local_steps": args.local_steps,
        "eval_every": 10_000,
        "preset": "tiny",
        "seed": args.seed,
        "out_dir": str(out),
        "state_root": str(out / "sites"),
    }
    log.info("%d sites, %d rounds x %d local steps", count, args.rounds, args.local_steps)
    payload = simulate_in_subprocess(
        files[:count], settings, cpus_per_site=1.0, result_file=work / f"sites-{count}.json"
    )
    rows = round_rows(payload["report"])
    return summarise(count, rows, args.rounds) | {
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
    measured = [r for r in rows if 2 <= r["round"] <= rounds - 1]
    for r in rows:
        r["round_in_site_trainings"] = r["seconds"] / (r["train_seconds_sum"] / r["sites"])
    return {
        "sites": count,
        "rounds": rows,
        "measured_rounds": [r["round"] for r in measured],
        "median_round_seconds": median([r["seconds"] for r in measured]),
        "median_train_seconds_sum": median([r["train_seconds_sum"] for r in measured]),
        "median_ratio": median([r["ratio"] for r in measured]),
        "median_round_in_site_trainings": median([r["round_in_site_trainings"] for r in measured]),
        "first_round_seconds": rows[0]["seconds"],
        "last_round_seconds": rows[-1]["seconds"],
    }


def render_markdown(result: dict[str, Any]) -> str:
    fit = result["fit"]
    units = result["fit_site_trainings"]

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
    ]
    lines = [
        "# Seconds per round vs number of sites (Ray simulation, 2 cores)",
        "",
        f"Demo sites, tiny preset, {result['rounds']} rounds x {result['local_steps']} local "
        f"steps, {result['images_per_site']} images per site, evaluation only after the last "
        f"round, `cpus_per_site=1` on {result['cores']} cores (shared, noisy machine).",
        "",
        md_table(header, rows),
        "",
        f"Linear fit: seconds/round = {fit['intercept']:.2f} + {fit['slope']:.2f} x sites, "
        f"R^2 = {fit['r2']:.4f}.",
        "",
        "Load-robust version (round seconds / the mean site's train-seconds in that round, i.e. "
        "the round's cost in single-site local trainings; ideal with 2 parallel slots: "
        f"sites / 2): {units['intercept']:.2f} + {units['slope']:.3f} x sites, "
        f"R^2 = {units['r2']:.4f}.",
        "",
    ]
    if result.get("comment"):
        lines += ["## What the numbers show", "", result["comment"], ""]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, nargs="*", default=[3, 8, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--images-per-site", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 and 3 sites, 3 rounds")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--name", default="scale", help="output file stem")
    parser.add_argument("--comment", default="", help="interpretation, stored with the results")
    args = parser.parse_args(argv)
    if args.quick:
        args.sites, args.rounds, args.local_steps, args.images_per_site = [2, 3], 3, 2, 30
    if args.rounds < 3:
        parser.error("--rounds must be >= 3 (round 1 and the final-eval round are excluded)")
    if len(args.sites) < 2:
        parser.error("give at least two site counts for the fit")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        files = demo_sites(work / "data", max(args.sites), images_per_site=args.images_per_site)
        runs = [run_sites(n, files, args, work) for n in sorted(args.sites)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fit, fit_units = fits(runs)
    result: dict[str, Any] = {
        "benchmark": "scale",
        "machine": machine_info(),
        "cores": os.cpu_count(),
        "rounds": args.rounds,
        "local_steps": args.local_steps,
        "images_per_site": args.images_per_site,
        "seed": args.seed,
        "runs": runs,
        "fit": fit,
        "fit_site_trainings": fit_units,
        "total_seconds": time.perf_counter() - start,
        "comment": args.comment,
    }
    log.info("wrote %s", write_results(args.out, args.name, result, render_markdown))
    return result


if __name__ == "__main__":
    main()
