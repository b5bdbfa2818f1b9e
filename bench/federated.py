"""Federated vs centralized vs site-alone UMedPT on the four ``../shared/data`` sites.

Why: the federation only pays off if aggregating the encoder and shared blocks over sites gives
each task (nearly) what pooling all data in one place gives, and more than the site could
reach alone. Three arms, tiny preset, the SAME number of local steps per task (``R * L``):

- federated: ``R`` rounds x ``L`` local steps, FedAvg over the encoder and the shared blocks
  (heads stay at the sites). Driven in-process with the real ClientApp and the real
  ``server.federation.run_federation`` through ``umedpt_fl.inprocess.ClientAppGrid`` (no Ray:
  deterministic, and no simulation overhead in the wall time). Metrics are those of the global
  weights with each site's own head, evaluated by the sites (what ``report.json`` records);
- centralized: ``umedpt.pretrain.pretrain`` on all four sites' tasks in one model, ``R * L``
  multi-task steps (one batch of every task per step);
- site-alone: ``pretrain`` on one site at a time, ``R * L`` steps.

Every arm uses the same preset, seed and learning rate, and validates at the same points
(every ``--eval-rounds`` rounds = ``--eval-rounds * L`` steps). Validation split, primary
metric of each task (accuracy / dice / map_50).

    PYTHONPATH=. python3 bench/federated.py                      # ~20 min on 2 busy cores
    PYTHONPATH=. python3 bench/federated.py --quick --out /tmp/bench
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    add_sites_arg,
    bench_parser,
    finish_run,
    md_table,
    scratch_dir,
    site_files,
    start_run,
)
from bench.simtools import federate_in_process
from umedpt.config import SiteConfig, load_site_config
from umedpt.models.presets import PRESETS
from umedpt.pretrain import PretrainConfig, load_runs, pretrain
from umedpt_fl import wire
from umedpt_fl.settings import THREADS_ENV

log = logging.getLogger("bench.federated")

ARMS = ("federated", "centralized", "site_alone")


def task_table(sites: Sequence[SiteConfig]) -> dict[str, dict[str, Any]]:
    """Task -> site, type, primary metric and (classification) the val majority-class rate."""
    tasks: dict[str, dict[str, Any]] = {}
    for site in sites:
        runs = load_runs(site.tasks)
        for run in runs:
            val = run.data.splits.get("val", [])
            info: dict[str, Any] = {
                "site": site.name,
                "type": run.config.type,
                "primary_metric": run.task_type.primary_metric,
                "splits": {k: len(v) for k, v in run.data.splits.items()},
            }
            labels = [s.label for s in val if s.label is not None]
            if run.config.type == "classification" and labels:
                info["val_majority_rate"] = Counter(labels).most_common(1)[0][1] / len(labels)
            tasks[run.name] = info
    return tasks


def run_federated(
    site_files: Sequence[Path], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """R rounds x L local steps through run_federation and the real ClientApp, no Ray."""
    start = time.perf_counter()
    report = federate_in_process(
        site_files,
        work / "federated",
        num_server_rounds=args.rounds,
        local_steps=args.local_steps,
        eval_every=args.eval_rounds,
        preset=args.preset,
        seed=args.seed,
        lr=args.lr or 0.0,
    )
    seconds = time.perf_counter() - start
    history = []
    for record in report["rounds"]:
        if not record["eval_metrics"]:
            continue
        val: dict[str, dict[str, float]] = {}
        for metrics in record["eval_metrics"].values():
            for key, value in metrics.items():
                if split := wire.split_task_metric(key):
                    val.setdefault(split[0], {})[split[1]] = value
        history.append({"step": record["round"] * args.local_steps, "val": val})
    train_seconds = sum(
        m.get(wire.TRAIN_SECONDS, 0.0)
        for r in report["rounds"]
        for m in r["train_metrics"].values()
    )
    return {
        "seconds": seconds,
        "train_seconds": train_seconds,
        "status": report["status"],
        "bytes_sent_per_round": report["rounds"][-1]["bytes_sent"],
        "history": history,
        "final": history[-1]["val"],
    }


def run_pretrain(
    sites: Sequence[SiteConfig], args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """Centralized UMedPT (``umedpt.pretrain``) on ``sites`` for R * L steps."""
    config = PretrainConfig(
        preset=args.preset,
        steps=args.rounds * args.local_steps,
        eval_every=args.eval_rounds * args.local_steps,
        seed=args.seed,
        device="cpu",
        lr=args.lr,
    )
    start = time.perf_counter()
    result = pretrain(sites, config, out)
    return {
        "seconds": time.perf_counter() - start,
        "history": [{"step": h["step"], "val": h["val"]} for h in result.history],
        "final": result.final_metrics,
    }


def render_markdown(result: dict[str, Any]) -> str:
    tasks = result["tasks"]
    arms = result["arms"]
    rows = []
    for name, info in tasks.items():
        metric = info["primary_metric"]
        fed = arms["federated"]["final"][name][metric]
        cen = arms["centralized"]["final"][name][metric]
        alone = arms["site_alone"][info["site"]]["final"][name][metric]
        majority = info.get("val_majority_rate")
        rows.append(
            [
                name,
                info["type"],
                metric,
                fed,
                cen,
                alone,
                f"{100 * (fed - cen):+.1f}",
                f"{100 * (fed - alone):+.1f}",
                "yes" if abs(fed - cen) <= 0.02 or fed >= cen else "no",
                "yes" if fed > alone else "no",
                f"{majority:.3f}" if majority is not None else "-",
            ]
        )
    header = [
        "task",
        "type",
        "metric",
        "federated",
        "centralized",
        "site-alone",
        "fed - cen (pts)",
        "fed - alone (pts)",
        "within 2 pts of cen",
        "above alone",
        "val majority rate",
    ]
    steps = result["rounds"] * result["local_steps"]
    alone_seconds = sum(a["seconds"] for a in arms["site_alone"].values())
    lines = [
        f"# Federated vs centralized vs site-alone ({result['label']})",
        "",
        f"Tiny preset, seed {result['seed']}, lr {result['lr_used']:g}, four sites of "
        f"`bench/sites` (one task each). Every task gets {steps} local steps: federated "
        f"{result['rounds']} rounds x {result['local_steps']} local steps (FedAvg of encoder + "
        f"shared blocks, in-process `run_federation` + `ClientAppGrid`, no Ray), centralized "
        f"{steps} multi-task steps, site-alone {steps} steps. Validation split; federated "
        "metrics are the global weights with each site's head.",
        "",
        md_table(header, rows),
        "",
        f"Wall time ({result['threads']} torch thread(s), shared machine): federated "
        f"{arms['federated']['seconds']:.0f} s, centralized {arms['centralized']['seconds']:.0f} "
        f"s, site-alone {alone_seconds:.0f} s in total; whole benchmark "
        f"{result['total_seconds']:.0f} s.",
        "",
        "Learning curve (primary metric, federated / centralized / site-alone):",
        "",
    ]
    curve = []
    for i, entry in enumerate(arms["federated"]["history"]):
        row: list[Any] = [entry["step"]]
        for name, info in tasks.items():
            metric = info["primary_metric"]
            cen = arms["centralized"]["history"][i]["val"][name][metric]
            alone = arms["site_alone"][info["site"]]["history"][i]["val"][name][metric]
            row.append(f"{entry['val'][name][metric]:.3f} / {cen:.3f} / {alone:.3f}")
        curve.append(row)
    lines += [md_table(["step", *tasks], curve), ""]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(
        __doc__, name="federated", threads=1, preset="tiny", quick="smoke run: 2 rounds x 2 steps"
    )
    parser.add_argument("--rounds", type=int, default=10, help="federated rounds R")
    parser.add_argument("--local-steps", type=int, default=15, help="local steps L per round")
    parser.add_argument("--eval-rounds", type=int, default=2, help="validate every N rounds")
    parser.add_argument("--lr", type=float, default=None, help="default: the preset's lr")
    add_sites_arg(parser)
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=ARMS)
    parser.add_argument("--keep", type=Path, default=None, help="keep run folders here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.local_steps, args.eval_rounds = 2, 2, 1
    if args.rounds % args.eval_rounds:
        parser.error("--rounds must be a multiple of --eval-rounds (aligned validation points)")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = start_run(args)
    os.environ[THREADS_ENV] = str(args.threads)
    files = site_files(args)
    sites = [load_site_config(f) for f in files]
    tasks = task_table(sites)
    arms: dict[str, Any] = {}
    with scratch_dir("bench-federated-", keep=args.keep) as work:
        if "federated" in args.arms:
            log.info("federated: %d rounds x %d local steps", args.rounds, args.local_steps)
            arms["federated"] = run_federated(files, args, work)
        if "centralized" in args.arms:
            log.info("centralized: %d steps", args.rounds * args.local_steps)
            arms["centralized"] = run_pretrain(sites, args, work / "centralized")
        if "site_alone" in args.arms:
            arms["site_alone"] = {}
            for site in sites:
                log.info("site alone: %s", site.name)
                arms["site_alone"][site.name] = run_pretrain([site], args, work / site.name)
    fields: dict[str, Any] = {
        "label": args.name,
        "preset": args.preset,
        "seed": args.seed,
        "lr": args.lr,
        "lr_used": args.lr if args.lr else PRESETS.get(args.preset).lr,
        "threads": args.threads,
        "rounds": args.rounds,
        "local_steps": args.local_steps,
        "eval_rounds": args.eval_rounds,
        "tasks": tasks,
        "arms": arms,
    }
    # the table compares the three arms: without all of them, only the JSON is written
    render = render_markdown if set(ARMS) <= set(arms) else None
    return finish_run(args, "federated", fields, render, start=start)


if __name__ == "__main__":
    main()
