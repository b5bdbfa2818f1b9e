"""Utility vs privacy: each task's metric at epsilon 1, 4 and 8 and without DP, same budget.

Why: sample-level DP-SGD at the sites (a ``[privacy]`` table in each site file) costs accuracy;
a hospital deciding on its epsilon needs to know how much, on real data. Goal: within 3
points of the non-private run at epsilon 8.

Every arm is the same federation of every site of ``bench/sites`` (the ``../shared/data``
datasets; ``--sites`` names others), tiny preset, ``R`` rounds x ``L`` local steps, FedAvg,
driven in-process with the real ClientApp and ``server.federation.run_federation`` (no Ray).
The only difference between arms is the
``[privacy]`` table written into every site file: ``target_epsilon`` (none, 8, 4, 1),
``target_delta`` and ``max_grad_norm`` shared by all. Validation split, primary metric of each
task, global weights with each site's own head (what ``report.json`` records).

Each arm's report is cached under ``--work`` (default
``experiments/.work/privacy-utility``); a rerun skips finished arms, so the experiment can be
run in pieces and still ends as one table. ``--work/settings.json`` records what the arms
depend on (the sites included): a folder of other settings is refused, not mixed in. Results:
``experiments/results/privacy_utility.{json,md}``.

    PYTHONPATH=. python3 experiments/privacy_utility.py                # ~1 h on 2 cores
    PYTHONPATH=. python3 experiments/privacy_utility.py --quick --out /tmp/bench --work /tmp/pu
"""

from __future__ import annotations

from federation.entry import enter_command_process

enter_command_process()  # a process entry: before anything imports Flower

import argparse
import json
import logging
import os
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomli_w

from bench.common import add_sites_arg, finish_run, site_files, sites_key, start_run
from bench.report import Report
from bench.simtools import federate_in_process
from experiments.common import WORK_DIR, experiment_parser
from federation import wire
from federation.settings import THREADS_ENV

log = logging.getLogger("experiments.privacy_utility")

NON_PRIVATE = "none"


def private_site_file(
    original: Path,
    folder: Path,
    epsilon: float | None,
    delta: float,
    clip: float,
    batch_size: int = 0,
) -> Path:
    """A copy of ``original`` under ``folder`` with absolute data paths, every task's
    ``batch_size`` where given and, unless ``epsilon`` is None, a ``[privacy]`` table."""
    raw = tomllib.loads(original.read_text())
    for task in raw["tasks"]:
        task["path"] = str((original.parent / task["path"]).resolve())
        if batch_size:
            task["batch_size"] = batch_size
    raw["state_dir"] = str((folder / "state" / original.stem).resolve())
    if epsilon is not None:
        raw["privacy"] = {"target_epsilon": epsilon, "target_delta": delta, "max_grad_norm": clip}
    target = folder / original.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(tomli_w.dumps(raw))
    return target


def final_metrics(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Task -> metric -> value, from the last round that evaluated."""
    for record in reversed(report["rounds"]):
        if record["eval_metrics"]:
            found: dict[str, dict[str, float]] = {}
            for metrics in record["eval_metrics"].values():
                for key, value in metrics.items():
                    if split := wire.split_task_metric(key):
                        found.setdefault(split[0], {})[split[1]] = value
            return found
    return {}


def spent_epsilon(report: dict[str, Any]) -> dict[str, float]:
    """Site -> the epsilon it reported with its last training reply."""
    spent: dict[str, float] = {}
    for record in report["rounds"]:
        for site, metrics in record["train_metrics"].items():
            if wire.DP_EPSILON in metrics:
                spent[site] = metrics[wire.DP_EPSILON]
    return spent


def check_work(args: argparse.Namespace, sites: Sequence[Path]) -> None:
    """Record in ``--work/settings.json`` what the cached arms depend on, or exit if the
    folder holds arms of other settings (other sites, rounds, ...): they would mix into the
    table. A folder of arms from before this record is refused too."""
    keys = ("rounds", "local_steps", "seed", "delta", "clip", "lr", "batch_size", "preset")
    settings = {**{k: getattr(args, k) for k in keys}, "sites": sites_key(sites)}
    saved = args.work / "settings.json"
    if saved.is_file():
        if json.loads(saved.read_text()) != settings:
            raise SystemExit(f"{args.work}: caches arms of other settings ({saved}); use another")
        return
    if list(args.work.glob("*.json")):
        raise SystemExit(f"{args.work}: arms without a settings.json (older runs); use another")
    args.work.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(settings, indent=1))


def run_arm(
    label: str, epsilon: float | None, sites: Sequence[Path], args: argparse.Namespace
) -> dict[str, Any]:
    """One federation with every site at ``epsilon`` (None: no DP); cached in ``--work``."""
    cache = args.work / f"{label}.json"
    if cache.exists():
        log.info("arm %s: cached in %s", label, cache)
        return json.loads(cache.read_text())
    folder = args.work / label
    files = [
        private_site_file(s, folder, epsilon, args.delta, args.clip, args.batch_size) for s in sites
    ]
    start = time.perf_counter()
    report = federate_in_process(
        files,
        folder / "federation",
        num_server_rounds=args.rounds,
        local_steps=args.local_steps,
        eval_every=args.rounds,
        preset=args.preset,
        seed=args.seed,
        lr=args.lr,
        min_sites=len(files),
    )
    arm = {
        "label": label,
        "target_epsilon": epsilon,
        "seconds": time.perf_counter() - start,
        "status": report["status"],
        "rejected": [r["rejected"] for r in report["rounds"]],
        "final": final_metrics(report),
        "spent_epsilon": spent_epsilon(report),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(arm, indent=2))
    return arm


def report_of(result: dict[str, Any]) -> Report:
    arms = result["arms"]
    base = arms[NON_PRIVATE]["final"]
    labels = [a for a in arms if a != NON_PRIVATE]
    header = ["task", "metric", "no DP", *(f"eps {arms[a]['target_epsilon']:g}" for a in labels)]
    rows = []
    for task, metrics in sorted(base.items()):
        metric = result["primary_metrics"].get(task, next(iter(metrics)))
        row: list[Any] = [task, metric, metrics[metric]]
        for label in labels:
            value = arms[label]["final"].get(task, {}).get(metric)
            row.append(
                "-" if value is None else f"{value:.3f} ({100 * (value - metrics[metric]):+.1f})"
            )
        rows.append(row)
    spent = [
        [
            label,
            f"{arms[label]['target_epsilon']:g}",
            ", ".join(f"{s} {e:.2f}" for s, e in sorted(arms[label]["spent_epsilon"].items())),
            f"{arms[label]['seconds']:.0f}",
        ]
        for label in labels
    ]
    steps = result["rounds"] * result["local_steps"]
    report = Report("Utility vs privacy (sample-level DP-SGD at every site)")
    report.text(
        f"Tiny preset, seed {result['seed']}, sites "
        f"{', '.join(result.get('sites', [])) or 'of `bench/sites`'}, "
        f"{result['rounds']} rounds x {result['local_steps']} local steps ({steps} steps per "
        f"task), FedAvg, in-process `run_federation` + `ClientAppGrid`. Every site has the "
        f"same `[privacy]` table: target_delta {result['delta']:g}, max_grad_norm "
        f"{result['clip']:g}; batch size "
        f"{result.get('batch_size') or 'as in the site files'}. Validation split, primary "
        "metric; in brackets the change from "
        "no DP in points. Goal: within 3 points of no DP at epsilon 8."
    )
    report.table(header, rows)
    report.text(
        "Epsilon each site reported with its last reply, and wall time per arm "
        f"({result['threads']} torch thread(s), shared machine; no DP: "
        f"{arms[NON_PRIVATE]['seconds']:.0f} s):"
    )
    return report.table(["arm", "target epsilon", "spent epsilon per site", "seconds"], spent)


def main(argv: Sequence[str] | None = None) -> None:
    parser = experiment_parser(
        __doc__, name="privacy_utility", threads=1, preset="tiny", quick="2 rounds x 2 steps"
    )
    add_sites_arg(parser)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-steps", type=int, default=15)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 4.0, 1.0])
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--clip", type=float, default=1.0, help="max_grad_norm")
    parser.add_argument("--lr", type=float, default=0.0, help="0: the preset's")
    parser.add_argument(
        "--batch-size", type=int, default=0, help="every task's batch size (0: the site files')"
    )
    parser.add_argument(
        "--work", type=Path, default=WORK_DIR / "privacy-utility", help="cache folder"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.local_steps = 2, 2
        if args.work == WORK_DIR / "privacy-utility":
            args.work = args.work.with_name("privacy-utility-quick")
    start = start_run(args)
    os.environ[THREADS_ENV] = str(args.threads)
    sites = site_files(args)
    check_work(args, sites)
    arms = {NON_PRIVATE: run_arm(NON_PRIVATE, None, sites, args)}
    for epsilon in args.epsilons:
        label = f"eps-{epsilon:g}"
        arms[label] = run_arm(label, epsilon, sites, args)
    from umedpt.config import load_site_config
    from umedpt.tasks import get_task_type

    configs = [load_site_config(site) for site in sites]
    primary = {
        task.name: get_task_type(task.type).primary_metric
        for site in configs
        for task in site.tasks
    }
    finish_run(
        args,
        "privacy_utility",
        {
            "sites": [site.name for site in configs],
            "rounds": args.rounds,
            "local_steps": args.local_steps,
            "seed": args.seed,
            "delta": args.delta,
            "clip": args.clip,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "primary_metrics": primary,
            "arms": arms,
        },
        report_of,
        start=start,
    )


if __name__ == "__main__":
    main()
