"""Federated vs centralized vs site-alone on the pretraining tasks, several seeds: the recipe.

Why: a hospital joins a federation only if the shared model does (nearly) what pooling the
data would, and more than it could do alone. This experiment measures a federated *recipe*
(rounds x local steps, learning-rate schedule, aggregation rule, weighting, whether the
task-type blocks are shared) against centralized multi-task training and each site alone,
on every site of ``bench/sites`` (the ``../shared/data`` datasets; ``--sites`` names others),
with the same number of gradient steps per task and the same data in every arm, for several
seeds:

- federated: ``server.federation.run_federation`` with the real ClientApp, in process
  (``bench.simtools.federate_in_process``; no Ray);
- centralized: ``umedpt.pretrain`` on all the sites' tasks (one batch of every task per
  step), with the recipe's learning-rate schedule over the same number of steps;
- site-alone: ``umedpt.pretrain`` on one site, same steps and schedule.

Every arm's final weights (no checkpoint selection) are scored on the validation split and,
once, on the test split; the recipe was chosen on validation, so ``recipe.json`` reports the
test split. Each task leads with its task type's primary metric (classification: balanced
accuracy, with accuracy beside it).

Each (arm, seed) run is cached as JSON under ``--work/<recipe key>`` (default
``experiments/.work/recipe``) and the pretraining arms, which do not depend on the
federation's settings, under ``--work/pretrain-<key>``; both keys include the sites (names
and task tables, ``bench.common.sites_key``), so runs on other sites are never reused. A rerun
skips what is done, and several processes may share the work (``--arms``, ``--seeds``). Results:
``experiments/results/recipe.{json,md}`` (``--screen``: ``recipe-screen``).

    PYTHONPATH=. python3 experiments/recipe.py            # the default recipe, 3 seeds
    PYTHONPATH=. python3 experiments/recipe.py --local-steps 15 --schedule constant --name old
    PYTHONPATH=. python3 experiments/recipe.py --screen --name recipe-screen
    PYTHONPATH=. python3 experiments/recipe.py --quick --out /tmp/bench
"""

from __future__ import annotations

from federation.entry import enter_command_process

enter_command_process()  # a process entry: before anything imports Flower

import argparse
import hashlib
import json
import logging
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import add_sites_arg, finish_run, site_files, sites_key, start_run
from bench.levers import add_lever_args, lever_site_files, levers_of
from bench.report import Report
from bench.simtools import cached, federate_in_process, federated_site_model
from experiments.common import WORK_DIR, experiment_parser
from federation.settings import THREADS_ENV, RunSettings
from strategies.fedadam import FedAdamOptions
from strategies.fedprox import FedProxOptions
from umedpt.checkpoint import load_model
from umedpt.config import SiteConfig, load_site_config
from umedpt.model import UMedPTModel
from umedpt.models.presets import model_config
from umedpt.pretrain import PretrainConfig, load_runs, pretrain
from umedpt.tasks import get_task_type
from umedpt.training.trainer import MultiTaskTrainer, TaskRun, TrainConfig

log = logging.getLogger("experiments.recipe")

FEDERATED, CENTRALIZED, SITE_ALONE = "federated", "centralized", "site-alone"
ARMS = (FEDERATED, CENTRALIZED, SITE_ALONE)
DEFAULTS = RunSettings()
# The rules' own options (FedProx's mu, FedAdam's server learning rate) and their defaults.
RULE_DEFAULTS = {**asdict(FedProxOptions()), **asdict(FedAdamOptions())}
# The federation's settings a recipe consists of (RunSettings field names, and the rules'
# options by field name: ``RunSettings.of`` takes both).
RECIPE_FIELDS = ("local_steps", "schedule", "strategy", "weighting", "share_blocks", "proximal_mu")
RECIPE_FIELDS += ("server_lr",)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = experiment_parser(
        __doc__, name="recipe", threads=1, preset="tiny", quick="20 steps per task, 1 seed"
    )
    add_sites_arg(parser)
    add_lever_args(parser)
    parser.add_argument("--steps", type=int, default=300, help="gradient steps per task")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=ARMS)
    parser.add_argument("--lr", type=float, default=None, help="default: the preset's lr")
    parser.add_argument("--local-steps", type=int, default=DEFAULTS.local_steps)
    parser.add_argument("--schedule", default=DEFAULTS.schedule, choices=("constant", "cosine"))
    parser.add_argument("--strategy", default=DEFAULTS.strategy)
    parser.add_argument("--weighting", default=DEFAULTS.weighting)
    parser.add_argument("--proximal-mu", type=float, default=RULE_DEFAULTS["proximal_mu"])
    parser.add_argument("--server-lr", type=float, default=RULE_DEFAULTS["server_lr"])
    parser.add_argument(
        "--share-blocks", action=argparse.BooleanOptionalAction, default=DEFAULTS.share_blocks
    )
    parser.add_argument("--work", type=Path, default=WORK_DIR / "recipe", help="cache folder")
    parser.add_argument(
        "--no-write", action="store_true", help="run the units only (another process writes)"
    )
    parser.add_argument(
        "--screen",
        action="store_true",
        help="run nothing: tabulate every recipe cached in --work (validation split) "
        "into --name (use --name recipe-screen)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.local_steps = 20, [0], min(args.local_steps, 10)
        if args.work == WORK_DIR / "recipe":
            args.work = args.work.with_name("recipe-quick")
    if args.steps % args.local_steps:
        parser.error("--steps must be a multiple of --local-steps (whole rounds)")
    return args


def recipe_of(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in RECIPE_FIELDS}


def key_of(values: dict[str, Any]) -> str:
    """A short, stable name for a set of settings (the cache folder of its runs)."""
    text = json.dumps(values, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def pretrain_key(args: argparse.Namespace) -> dict[str, Any]:
    """What the pretraining arms depend on (not the federation's own settings)."""
    key = {
        "preset": args.preset,
        "steps": args.steps,
        "lr": args.lr,
        "schedule": args.schedule,
        "threads": args.threads,
        "sites": sites_key(site_files(args)),  # other sites (or splits): other runs
        "levers": levers_of(args).key(),  # augmentation, a self-supervised task per site
    }
    return key


def federated_key(args: argparse.Namespace) -> dict[str, Any]:
    return {**pretrain_key(args), **recipe_of(args)}


def scored(model: UMedPTModel, runs: Sequence[TaskRun]) -> dict[str, dict[str, dict[str, float]]]:
    """{split: {task: metrics}} of ``model`` on the val and test splits."""
    trainer = MultiTaskTrainer(model, list(runs), TrainConfig(device="cpu"))
    return {split: trainer.evaluate(split) for split in ("val", "test")}


def run_federated(files: Sequence[Path], seed: int, args: argparse.Namespace, folder: Path):
    rounds = args.steps // args.local_steps
    start = time.perf_counter()
    report = federate_in_process(
        files,
        folder / "run",
        num_server_rounds=rounds,
        eval_every=rounds,
        preset=args.preset,
        seed=seed,
        lr=args.lr or 0.0,
        tracking="none",
        **recipe_of(args),
    )
    seconds = time.perf_counter() - start
    if report["status"] != "completed":
        raise RuntimeError(f"federated seed {seed}: the run did not complete: {report['status']}")
    metrics: dict[str, dict[str, dict[str, float]]] = {"val": {}, "test": {}}
    for file in files:
        site = load_site_config(file)
        model = federated_site_model(site, folder / "run", args.preset)
        for split, values in scored(model, load_runs(site.tasks)).items():
            metrics[split].update(values)
    return {"seconds": seconds, "rounds": rounds, **metrics}


def run_pretrain(sites: Sequence[SiteConfig], seed: int, args: argparse.Namespace, folder: Path):
    config = PretrainConfig(
        preset=args.preset,
        steps=args.steps,
        eval_every=args.steps,
        seed=seed,
        device="cpu",
        lr=args.lr,
        schedule=args.schedule,
    )
    start = time.perf_counter()
    pretrain(sites, config, folder / "run")
    seconds = time.perf_counter() - start
    model = load_model(folder / "run" / "checkpoint")
    runs = load_runs([t for s in sites for t in s.tasks])
    return {"seconds": seconds, **scored(model, runs)}


def run_units(args: argparse.Namespace, files: list[Path], sites: list[SiteConfig]) -> dict:
    fed_dir = args.work / f"federated-{key_of(federated_key(args))}"
    pre_dir = args.work / f"pretrain-{key_of(pretrain_key(args))}"
    for folder, settings in ((fed_dir, federated_key(args)), (pre_dir, pretrain_key(args))):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "settings.json").write_text(json.dumps(settings, indent=1))
    results: dict[str, Any] = {FEDERATED: {}, CENTRALIZED: {}, SITE_ALONE: {}}
    for seed in args.seeds:
        if FEDERATED in args.arms:
            log.info("federated, seed %d", seed)
            results[FEDERATED][seed] = cached(
                fed_dir / f"seed{seed}.json", lambda d, s=seed: run_federated(files, s, args, d)
            )
        if CENTRALIZED in args.arms:
            log.info("centralized, seed %d", seed)
            results[CENTRALIZED][seed] = cached(
                pre_dir / f"centralized-seed{seed}.json",
                lambda d, s=seed: run_pretrain(sites, s, args, d),
            )
        if SITE_ALONE in args.arms:
            merged: dict[str, Any] = {"seconds": 0.0, "val": {}, "test": {}}
            for site in sites:
                log.info("site alone: %s, seed %d", site.name, seed)
                one = cached(
                    pre_dir / f"alone-{site.name}-seed{seed}.json",
                    lambda d, s=seed, site=site: run_pretrain([site], s, args, d),
                )
                merged["seconds"] += one["seconds"]
                for split in ("val", "test"):
                    merged[split].update(one[split])
            results[SITE_ALONE][seed] = merged
    return results


def task_info(sites: Sequence[SiteConfig]) -> dict[str, dict[str, Any]]:
    info = {}
    for site in sites:
        for task in site.tasks:
            metric = get_task_type(task.type).primary_metric
            info[task.name] = {"site": site.name, "type": task.type, "metric": metric}
    return info


def summarise(results: dict[str, Any], tasks: dict[str, Any], split: str) -> dict[str, Any]:
    """``{task: {metric, arms: {arm: [one value per seed]}, accuracy?: {...}}}`` on ``split``."""
    out: dict[str, Any] = {}
    for task, info in tasks.items():
        entry: dict[str, Any] = {"metric": info["metric"], "arms": {}}
        for arm, by_seed in results.items():
            seeds = sorted(by_seed, key=int)
            entry["arms"][arm] = [by_seed[s][split][task][info["metric"]] for s in seeds]
            if info["type"] == "classification":
                accuracy = [by_seed[s][split][task]["accuracy"] for s in seeds]
                entry.setdefault("accuracy", {})[arm] = accuracy
        out[task] = entry
    return out


def mean_sd(values: Sequence[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def report_of(result: dict[str, Any]) -> Report:
    budget = result["budget"]
    report = Report(f"Recipe: federated vs centralized vs site-alone ({result['label']})")
    report.text(
        f"Recipe: `{json.dumps(result['recipe'])}`. Budget: {budget['steps_per_task']} steps per "
        f"task ({budget['rounds']} rounds x {budget['local_steps']} local steps), tiny preset "
        f"(Swin, 64 px), lr {budget['lr']}, {budget['threads']} torch thread(s), seeds "
        f"{budget['seeds']}. Final weights, **test split** (validation beside it in the JSON); "
        "mean ± sd over seeds."
        + (f" Sites: {', '.join(result['sites'])}." if "sites" in result else "")
        + (f" Levers: `{json.dumps(result['levers'])}`." if "levers" in result else "")
    )
    header = ["task", "metric", *ARMS, "fed - cen (pts)", "fed - alone (pts)", "within 1 pt"]
    rows = []
    for task, entry in result["tasks"].items():
        arms = entry["arms"]
        fed, cen, alone = (statistics.mean(arms[a]) for a in ARMS)
        rows.append(
            [
                task,
                entry["metric"],
                *(mean_sd(arms[a]) for a in ARMS),
                f"{100 * (fed - cen):+.1f}",
                f"{100 * (fed - alone):+.1f}",
                "yes" if fed >= cen - 0.01 else "no",
            ]
        )
    report.table(header, rows)
    acc_rows = [
        [task, *(mean_sd(entry["accuracy"][a]) for a in ARMS)]
        for task, entry in result["tasks"].items()
        if "accuracy" in entry
    ]
    if acc_rows:
        report.text("Accuracy beside it (classification):").table(["task", *ARMS], acc_rows)
    seconds = result["seconds"]
    return report.text(
        "Wall time per seed (s, mean): "
        + ", ".join(f"{arm} {statistics.mean(v):.0f}" for arm, v in seconds.items() if v)
    )


def screen(args: argparse.Namespace, tasks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every recipe cached under ``--work``, on the **validation** split (where levers are
    chosen): per task, the federated mean over the seeds it has, and the centralized and
    site-alone means over the same seeds with the same schedule and budget. Only recipes run on
    these sites count; a cache from before the key named its sites counts when it holds
    exactly these tasks (``--sites`` the four files of the time reproduces its screen)."""
    current = sites_key(site_files(args))
    entries = []
    for folder in sorted(args.work.glob("federated-*")):
        settings = json.loads((folder / "settings.json").read_text())
        pre_keys = {k: settings[k] for k in ("preset", "steps", "lr", "schedule", "threads")}
        for optional in ("sites", "levers"):
            if optional in settings:
                pre_keys[optional] = settings[optional]
        pre_dir = args.work / f"pretrain-{key_of(pre_keys)}"
        seeds = sorted(int(p.stem.removeprefix("seed")) for p in folder.glob("seed*.json"))
        if not seeds:
            continue
        first = json.loads((folder / f"seed{seeds[0]}.json").read_text())
        # A self-supervised lever adds tasks: the labelled ones must all be there.
        if settings.get("sites", current) != current or not set(tasks) <= set(first["val"]):
            log.info("screen: %s ran on other sites, left out", folder.name)
            continue
        row: dict[str, Any] = {"settings": settings, "seeds": seeds, "tasks": {}}
        for task, info in tasks.items():
            metric = info["metric"]
            arms: dict[str, list[float]] = {FEDERATED: [], CENTRALIZED: [], SITE_ALONE: []}
            for seed in seeds:
                fed = json.loads((folder / f"seed{seed}.json").read_text())
                arms[FEDERATED].append(fed["val"][task][metric])
                for arm, name in (
                    (CENTRALIZED, f"centralized-seed{seed}"),
                    (SITE_ALONE, f"alone-{info['site']}-seed{seed}"),
                ):
                    if (path := pre_dir / f"{name}.json").is_file():
                        arms[arm].append(json.loads(path.read_text())["val"][task][metric])
            row["tasks"][task] = {"metric": metric, "arms": arms}
        entries.append(row)
    return {"split": "val", "recipes": entries}


def screen_report_of(result: dict[str, Any]) -> Report:
    report = Report("Recipe screen: the levers tried, on the validation split")
    report.text(
        "Federated mean over its seeds / centralized / site-alone over the same seeds, each "
        "with the same schedule and budget (n = seeds per arm where they differ); the final "
        "recipe's test-split numbers are in `recipe.md`. `-` = not run."
    )
    tasks = list(result["recipes"][0]["tasks"]) if result["recipes"] else []
    header = [
        "steps", "L", "schedule", "rule", "blocks", "augment", "SSL", "class weights", "seeds",
        *tasks,
    ]  # fmt: skip
    rows = []
    for entry in result["recipes"]:
        st = entry["settings"]
        cells = []
        for task in tasks:
            arms = entry["tasks"][task]["arms"]
            counts = [len(arms[a]) for a in ARMS]
            spread = f" (n {'/'.join(map(str, counts))})" if len(set(counts)) > 1 else ""
            cells.append(
                " / ".join(f"{statistics.mean(arms[a]):.3f}" if arms[a] else "-" for a in ARMS)
                + spread
            )
        rule = st["strategy"] + (f" mu={st['proximal_mu']}" if st["strategy"] == "fedprox" else "")
        blocks = "shared" if st["share_blocks"] else "at home"
        seeds = ",".join(map(str, entry["seeds"]))
        levers = st.get("levers", {"augment": "none", "self_supervised": False})
        ssl = "yes" if levers["self_supervised"] else "no"
        recipe = [st["steps"], st["local_steps"], st["schedule"], rule, blocks]
        weights = levers.get("class_weighting", "none")
        rows.append([*recipe, levers["augment"], ssl, weights, seeds, *cells])
    return report.table(header, rows)


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    start = start_run(args)
    if args.screen:
        sites = [load_site_config(f) for f in site_files(args)]
        fields = screen(args, task_info(sites))
        return finish_run(args, "recipe-screen", fields, screen_report_of, start=start)
    os.environ[THREADS_ENV] = str(args.threads)
    levers = levers_of(args)
    files = lever_site_files(
        site_files(args), levers, args.work / f"sites-{key_of(pretrain_key(args))}"
    )
    sites = [load_site_config(f) for f in files]
    results = run_units(args, files, sites)
    if args.no_write or set(args.arms) != set(ARMS):
        return None
    tasks = task_info(sites)
    fields = {
        "label": args.name,
        "sites": [site.name for site in sites],
        "recipe": recipe_of(args),
        "levers": levers.key(),
        "budget": {
            "steps_per_task": args.steps,
            "rounds": args.steps // args.local_steps,
            "local_steps": args.local_steps,
            "lr": args.lr or model_config(args.preset).lr,
            "warmup_steps": model_config(args.preset).warmup_steps,
            "preset": args.preset,
            "threads": args.threads,
            "seeds": args.seeds,
        },
        "tasks": summarise(results, tasks, "test"),
        "validation": summarise(results, tasks, "val"),
        "seconds": {
            arm: [r["seconds"] for r in by_seed.values()] for arm, by_seed in results.items()
        },
    }
    return finish_run(args, "recipe", fields, report_of, start=start)


if __name__ == "__main__":
    main()
