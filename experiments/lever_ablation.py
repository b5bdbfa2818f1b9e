"""Which lever did it: the federated encoder with one lever changed, on a held-out site.

Issue 20's part 3. For each ``--targets`` site (the ones where the leave-one-site-out goals
are closest), the federated encoder of ``experiments/leave_one_site_out.py`` is pretrained on
the other sites once per variant and pretraining seed, and evaluated at one budget
(``--fraction``, 10% of the held-out labels) in both modes, beside the random init:

- ``default``: the recipe as `simulate` and `server` run it; the leave-one-site-out run's
  own cache, so its encoders and cells are shared, not retrained;
- ``augment``: every labelled task augmented (``--augment default``);
- ``self-supervised``: a self-supervised task over each pretraining site's images;
- ``class-weights``: balanced class weights in every classification task's loss;
- ``four-sites``: pretrained on the first run's four sites (``--four-sites``) less the
  target, not on all the others: what the two new sites (dermoscopy, chest X-ray) add. For a
  target among the four that is 3 pretraining sites against 5; for one of the new sites, 4
  against 5 (one new site added); the table gives each row's number of pretraining sites.

Only the federated arm is pretrained, and the random init is evaluated once, in the
default's cache (it does not depend on the levers). Every variant runs every pretraining
seed, because a lever's effect is a difference of two noisy encoders: the table gives, per
target and mode, each variant's mean (over pretraining seeds, each the mean over the
evaluation seeds), its change from the default paired by pretraining seed (mean ± sd of the
per-seed differences), and its distance to the random init. The held-out site's images
never pretrain, labelled or not (:func:`experiments.leave_one_site_out.check_held_out`).

Resumable (every pretraining run and cell is cached as in leave_one_site_out.py; a rerun
skips what is done), two processes may share the caches: each writes the table of every
target the caches hold, not only its own ``--targets``. Without ``--run`` it only gathers
what the caches hold. Results: ``experiments/results/lever-ablation.{json,md}``.

    nice -n 10 env PYTHONPATH=. python3 experiments/lever_ablation.py --run \\
        --targets isic2017_dermoscopy > /tmp/ablation.log 2>&1 &
    PYTHONPATH=. python3 experiments/lever_ablation.py --targets isic2017_dermoscopy  # gather
    # smoke: demo sites, the leave-one-site-out --quick budget, 2 pretraining seeds
    umedpt-fl demo-data /tmp/demo
    PYTHONPATH=. python3 experiments/lever_ablation.py --quick --run --targets clinic-a \\
        --sites /tmp/demo/clinic-*.toml --four-sites clinic-a clinic-b --pretrain-seeds 2 \\
        --out /tmp/ablation
"""

from __future__ import annotations

from federation.entry import enter_command_process

enter_command_process()  # a process entry: before anything imports Flower

import argparse
import logging
import statistics
import time
from collections.abc import Sequence
from typing import Any

from bench.common import add_sites_arg, site_files, start_run
from bench.report import Report, write_results
from experiments import leave_one_site_out as loso
from experiments.common import add_eval_class_weighting_arg, experiment_parser
from umedpt.config import load_site_config

log = logging.getLogger("experiments.lever_ablation")

NAME = "lever-ablation"
DEFAULT = "default"
FOUR_SITES = "four-sites"
# Each variant's change to the default recipe, as leave_one_site_out.py arguments.
LEVER_ARGS = {
    DEFAULT: [],
    "augment": ["--augment", "default"],
    "self-supervised": ["--self-supervised"],
    "class-weights": ["--class-weighting", "balanced"],
    FOUR_SITES: [],  # the sites change instead: see variant_argv
}
VARIANTS = tuple(LEVER_ARGS)
FIRST_RUN_SITES = ("bccd", "breastmnist", "hc18_fetal_head", "pbc_blood_cells")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = experiment_parser(
        __doc__,
        name=NAME,
        preset="tiny",
        threads=1,
        quick="smoke: leave_one_site_out.py --quick budgets, 1 evaluation seed",
    )
    add_sites_arg(parser)
    parser.add_argument("--targets", nargs="+", required=True, help="held-out site names")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=VARIANTS,
        help="default is always measured: every change is paired with it",
    )
    parser.add_argument("--fraction", type=float, default=loso.GOAL_FRACTION)
    parser.add_argument("--seeds", type=int, default=3, help="evaluation seeds per cell")
    parser.add_argument("--pretrain-seeds", type=int, default=3, help="--seed, --seed+1, ...")
    add_eval_class_weighting_arg(parser, default="balanced")
    parser.add_argument(
        "--four-sites",
        nargs="+",
        default=list(FIRST_RUN_SITES),
        help="the four-sites variant's pretraining sites (the target is never one of them)",
    )
    parser.add_argument("--run", action="store_true", help="train and evaluate what is missing")
    args = parser.parse_args(argv)
    if args.pretrain_seeds < 1:
        parser.error("--pretrain-seeds must be >= 1")
    if args.quick:
        args.seeds = 1
    args.variants = [DEFAULT, *[v for v in args.variants if v != DEFAULT]]
    return args


def variant_argv(args: argparse.Namespace, variant: str, target: str) -> list[str]:
    """leave_one_site_out.py's arguments for ``variant`` with ``target`` held out."""
    argv = ["--seed", str(args.seed), "--preset", args.preset, "--threads", str(args.threads)]
    argv += ["--eval-class-weighting", args.eval_class_weighting, *LEVER_ARGS[variant]]
    files = site_files(args)
    if variant == FOUR_SITES:
        by_name = {load_site_config(f).name: f for f in files}
        unknown = sorted(set(args.four_sites) - set(by_name))
        if unknown:
            raise SystemExit(f"--four-sites {unknown}: not among the sites {sorted(by_name)}")
        files = [by_name[n] for n in dict.fromkeys([*args.four_sites, target])]
    if args.sites or variant == FOUR_SITES:
        argv += ["--sites", *map(str, files)]
    if args.quick:
        argv.append("--quick")
    return argv


def variant_args(args: argparse.Namespace, variant: str, target: str) -> argparse.Namespace:
    """The parsed leave-one-site-out settings of one variant (its cache keys included)."""
    parsed = loso.parse_args(variant_argv(args, variant, target))
    # Not part of the cache keys: the ablation's budget and seeds.
    parsed.fractions, parsed.seeds = f"{args.fraction:g}", args.seeds
    parsed.labels_fractions = ""  # goal 3's curve is the main run's, not each lever's
    parsed.pretrain_seeds = args.pretrain_seeds
    return parsed


def run(args: argparse.Namespace, start: float) -> None:
    """Every target, pretraining seed and variant (in that order: a seed's variants finish
    together, so the paired comparison grows a seed at a time)."""
    for target in args.targets:
        for seed in loso.pretrain_seeds(args):
            for variant in args.variants:
                settings = variant_args(args, variant, target)
                originals, pretraining = loso.prepare(settings)
                held_out = {s.name: s for s in originals}[target]
                others = loso.pretraining_sites(held_out, pretraining)
                log.info("%s: %s, pretraining seed %d", target, variant, seed)
                # the random init does not depend on the levers: the default's cells serve all
                fed = (loso.FEDERATED,)
                loso.run_target(held_out, others, settings, seed, fed, variant == DEFAULT)
                write_outputs(args, start)


def gather(args: argparse.Namespace, targets: Sequence[str]) -> list[dict[str, Any]]:
    """Every cached cell of ``targets`` at ``--fraction`` of the federated and random arms,
    per variant."""
    rows = []
    for target in targets:
        for variant in args.variants:
            settings = variant_args(args, variant, target)
            for seed in loso.pretrain_seeds(args):
                found, _ = loso.collect(
                    loso.work_of(settings, seed), [target], seed, args.eval_class_weighting
                )
                rows += [
                    {**r, "variant": variant}
                    for r in found
                    if r["fraction"] == args.fraction
                    and r["encoder"] in (loso.FEDERATED, loso.RANDOM)
                    and r["seed"] < args.seeds
                ]
    return rows


def seed_means(
    rows: list[dict[str, Any]], targets: Sequence[str], variants: Sequence[str], eval_seeds: int
) -> dict[tuple, float]:
    """(target, variant, encoder, mode, pretraining seed) -> the mean over the evaluation
    seeds, where every one of them is there (:func:`loso.complete_means` per variant)."""
    means = {}
    for variant in variants:
        mine = [r for r in rows if r["variant"] == variant]
        for target in targets:
            found = loso.complete_means(mine, target, eval_seeds)
            for (encoder, mode, _fraction, seed), value in found.items():
                means[(target, variant, encoder, mode, seed)] = value
    return means


def mean_sd(values: Sequence[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values) if values else None,
        "sd": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
    }


def compare(
    means: dict[tuple, float], targets: Sequence[str], variants: Sequence[str], seeds: list[int]
) -> list[dict[str, Any]]:
    """Per target, mode and variant: the federated mean over the pretraining seeds it shares
    with the default (a lever's row never averages seeds its default row lacks), its paired
    change from the default, and its distance to the random init on those seeds."""
    out = []
    for target in targets:
        for mode in loso.MODES:
            for variant in variants:
                fed = {s: means.get((target, variant, loso.FEDERATED, mode, s)) for s in seeds}
                default = {s: means.get((target, DEFAULT, loso.FEDERATED, mode, s)) for s in seeds}
                rnd = {s: means.get((target, DEFAULT, loso.RANDOM, mode, s)) for s in seeds}
                paired = [s for s in seeds if fed[s] is not None and default[s] is not None]
                out.append(
                    {
                        "target": target,
                        "mode": mode,
                        "variant": variant,
                        "federated": mean_sd([fed[s] for s in paired]),
                        "vs_default": mean_sd([fed[s] - default[s] for s in paired]),
                        "vs_random": mean_sd(
                            [fed[s] - rnd[s] for s in paired if rnd[s] is not None]
                        ),
                        "pretrain_seeds": paired,
                    }
                )
    return out


def reported_targets(args: argparse.Namespace, rows: list[dict[str, Any]]) -> list[str]:
    """``--targets``, then every other target a lever variant's caches hold cells of: another
    process sharing the caches writes the same file, and must not drop this one's targets.
    The default's cache alone does not count: it is the leave-one-site-out run's, which holds
    every target, ablated or not."""
    sites = [load_site_config(f).name for f in site_files(args)]
    found = {r["target"] for r in rows if r["variant"] != DEFAULT}
    return [*args.targets, *[s for s in sites if s in found and s not in args.targets]]


def pretraining_site_count(args: argparse.Namespace, variant: str, target: str) -> int:
    """How many sites pretrain ``target``'s encoder in ``variant``."""
    if variant == FOUR_SITES:
        return len(set(args.four_sites) - {target})
    return len(site_files(args)) - 1


def metric_of(rows: list[dict[str, Any]], target: str) -> str:
    return next((r["metric"] for r in rows if r["target"] == target), "-")


def missing_of(
    means: dict[tuple, float], targets: Sequence[str], variants: Sequence[str], seeds: list[int]
) -> list[str]:
    """What the comparison still lacks: per target, variant (or the random init) and mode,
    the pretraining seeds without every evaluation seed."""
    wanted = [(v, loso.FEDERATED) for v in variants] + [(DEFAULT, loso.RANDOM)]
    out = []
    for target in targets:
        for variant, encoder in wanted:
            label = "random init" if encoder == loso.RANDOM else variant
            for mode in loso.MODES:
                absent = [s for s in seeds if (target, variant, encoder, mode, s) not in means]
                if absent:
                    seeds_text = ",".join(map(str, absent))
                    out.append(f"{target} {label} {mode} (pretraining seed {seeds_text})")
    return out


def write_outputs(args: argparse.Namespace, start: float) -> None:
    sites = [load_site_config(f).name for f in site_files(args)]
    rows = gather(args, sites)
    targets = reported_targets(args, rows)
    seeds = loso.pretrain_seeds(args)
    means = seed_means(rows, targets, args.variants, args.seeds)
    comparison = compare(means, targets, args.variants, seeds)
    for row in comparison:
        row["metric"] = metric_of(rows, row["target"])
        row["pretraining_sites"] = pretraining_site_count(args, row["variant"], row["target"])
    missing = missing_of(means, targets, args.variants, seeds)
    result = {
        "name": args.name,
        "comment": args.comment,
        "meta": {
            "preset": args.preset,
            "targets": targets,
            "variants": args.variants,
            "steps": variant_args(args, DEFAULT, args.targets[0]).steps,
            "fraction": args.fraction,
            "seeds": args.seeds,
            "pretrain_seeds": seeds,
            "eval_class_weighting": args.eval_class_weighting,
            "four_sites": args.four_sites,
            "sites": [load_site_config(f).name for f in site_files(args)],
            "missing": missing,
            "seconds": time.perf_counter() - start,
        },
        "comparison": comparison,
        "rows": rows,
    }
    write_results(args.out, args.name, result, report_of(result))


def signed(stats: dict[str, Any]) -> str:
    """A paired difference in points, with its number of pretraining seeds: [n]."""
    if stats["mean"] is None:
        return "-"
    sd = "" if stats["sd"] is None else f" ± {100 * stats['sd']:.1f}"
    return f"{100 * stats['mean']:+.1f}{sd} [{stats['n']}]"


def report_of(result: dict[str, Any]) -> Report:
    meta = result["meta"]
    report = Report(f"Lever ablation on held-out sites ({meta.get('preset', 'tiny')} preset, CPU)")
    report.text(
        f"The federated encoder of `leave_one_site_out.py` (default recipe, {meta['steps']} "
        "steps per task) with one lever changed, pretrained on every site but the target "
        f"(four-sites: {', '.join(meta['four_sites'])} less the target); evaluated at "
        f"{meta['fraction']:g}% of the target's labels, {meta['seeds']} evaluation seeds, "
        f"classification heads with {meta['eval_class_weighting']} class weights; pretraining "
        f"seeds {meta['pretrain_seeds']}. Federated: mean ± sd over pretraining seeds of each "
        "seed's mean over evaluation seeds, on the pretraining seeds the default has too (column "
        "seeds). Change from default and distance to random init: mean ± sd of the per-seed "
        "differences, in points, over the [n] pretraining seeds that both sides have. Sites: "
        "how many sites pretrain the encoder. "
        "Rows: `lever-ablation.json`.",
        "Still missing: " + ("; ".join(meta["missing"]) or "nothing") + ".",
    )
    report.table(
        [
            "target (metric)",
            "mode",
            "variant",
            "sites",
            "federated",
            "vs default (pts)",
            "vs random (pts)",
            "seeds",
        ],
        [
            [
                f"{c['target']} ({c.get('metric', '-')})",
                c["mode"],
                c["variant"],
                str(c.get("pretraining_sites", "-")),
                "-"
                if c["federated"]["mean"] is None
                else f"{c['federated']['mean']:.3f}"
                + ("" if c["federated"]["sd"] is None else f" ± {c['federated']['sd']:.3f}"),
                "-" if c["variant"] == DEFAULT else signed(c["vs_default"]),
                signed(c["vs_random"]),
                ",".join(map(str, c["pretrain_seeds"])) or "-",
            ]
            for c in result["comparison"]
        ],
    )
    return report


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    start = start_run(args)
    # opacus's import (via umedpt.pretrain) runs logging.basicConfig first: root at WARNING
    for logger in (log, loso.log):
        logger.setLevel(logging.INFO)
    sites = [load_site_config(f).name for f in site_files(args)]
    loso.check_targets(args.targets, sites)
    if args.run:
        run(args, start)
    write_outputs(args, start)


if __name__ == "__main__":
    main()
